"""Every config file and variant loads and passes settings validation (no model, no compile)."""

import dataclasses
from pathlib import Path

import pytest
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from attnrl_jax.rl.settings import ConfigError, Method, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p.name for p in CONFIGS.glob("*.py") if p.name != "variants.py")
PAPER = ("r1_distill_qwen_1p5b.py", "r1_distill_qwen_7b.py")
VARIANTS = (
    "attnrl", "grpo", "treerl", "treerl_off_policy", "treerl_atb", "first_two_steps",
    "no_attention_filter", "no_difficulty_expansion",
)  # fmt: skip


def load(name: str, variant: str = ""):
    """Loads FILE[:VARIANT] the way `--config=` does on the command line."""
    spec = str(CONFIGS / name) + (f":{variant}" if variant else "")
    return ConfigFileFlagParser(name="config").parse(spec)


def fill_required(c):
    c.workdir = "/tmp/unused"
    if c.model.require_path:
        c.model.path = "/models/dummy"
    if not c.data.train_files:
        c.data.train_files = "/data/dummy.parquet"
    return c


@pytest.mark.parametrize("name", FILES)
def test_every_config_file_validates(name):
    settings = resolve(fill_required(load(name)))
    assert settings.rollout.max_new_tokens >= 1


@pytest.mark.parametrize("paper", PAPER)
@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_variants_validate(paper, variant):
    c = fill_required(load(paper, variant))
    settings = resolve(c)
    expected = {"grpo": "grpo", "treerl": "treerl", "first": "treerl"}.get(
        variant.split("_")[0], "attnrl"
    )
    assert c.method == expected
    if variant == "first_two_steps":  # the ICLR ablation: branch at response steps 2 and 3
        assert settings.method.branching == "earliest" and not settings.off_policy
    assert settings.rollout.tree == (variant != "grpo")
    assert c.total_steps == (500 if expected == "attnrl" else 800)


def test_paper_settings():
    c = load("r1_distill_qwen_1p5b.py")
    assert (c.rollout.max_new_tokens, c.data.max_prompt_len, c.rollout.group_size) == (
        8192,
        1024,
        6,
    )
    assert (c.loss.clip_low, c.loss.clip_high, c.loss.kl_weight) == (0.2, 0.28, 0.001)
    assert (c.optim.learning_rate, c.ads.target_sequences, c.train.minibatch_problems) == (
        1e-6, 1920, 32,
    )  # fmt: skip
    assert c.mesh.fsdp == -1 and load("r1_distill_qwen_7b.py").mesh.tensor > 1
    assert c.eval.benchmarks == "paper"


def test_empty_model_path_on_paper_config_is_a_clear_error():
    c = fill_required(load("r1_distill_qwen_1p5b.py"))
    c.model.path = ""
    with pytest.raises(ConfigError, match=r"model.path is required by this config"):
        resolve(c)
    c = load("r1_distill_qwen_7b.py:grpo")
    c.workdir = "/tmp/unused"
    with pytest.raises(ConfigError) as e:
        resolve(c)
    assert "model.path is required" in str(e.value) and "data.train_files is required" in str(
        e.value
    )


def test_command_line_overrides_compose_with_a_variant():
    c = load("r1_distill_qwen_1p5b.py", "treerl")
    c.mesh.update(data=1, fsdp=1, tensor=1)  # one CPU: only the mesh changes
    assert resolve(fill_required(c)).rollout.selection.method == "entropy"


def test_unknown_variant_and_bad_eval_settings_are_named():
    with pytest.raises(ValueError, match="unknown config variant 'ppo'"):
        load("r1_distill_qwen_1p5b.py", "ppo")
    c = fill_required(load("demo.py"))
    c.eval.update(every=2, benchmarks="math500,gsm9k", k=0)
    with pytest.raises(ConfigError) as e:
        resolve(c)
    assert "eval.k must be >= 1" in str(e.value) and "unknown benchmark 'gsm9k'" in str(e.value)


def test_resolve_gives_one_frozen_run_config_with_each_method_spelled_out():
    c = fill_required(load("demo.py"))
    run = resolve(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 1
    hash(run.rollout)  # static: hashable for jit
    assert run.method == Method("attnrl", "atb", True, True, True)
    assert run.method.needs_fci and run.rollout.scoring.with_fci and run.rollout.tree
    assert run.rollout.ads.all_correct == "attention" and run.data.demo
    c.method = "treerl"
    treerl = resolve(c)
    assert treerl.method == Method("treerl", "entropy", False, False, False)
    assert treerl.method.needs_entropies and not treerl.rollout.scoring.with_fci
    assert treerl.rollout.ads.expansion == "uniform"
    c.method, c.branching = "treerl", "atb"
    assert resolve(c).rollout.scoring.with_fci  # TreeRL + ATB reads FCI
    c.method, c.branching = "grpo", ""
    assert not resolve(c).method.tree


def test_every_section_problem_is_listed_in_one_error():
    c = fill_required(load("demo.py"))
    c.checkpoint.every, c.grading.timeout_s, c.rollout.group_size = 0, 0.0, 1
    c.grading.reward = "lenient"
    with pytest.raises(ConfigError) as e:
        resolve(c)
    for message in (
        "checkpoint.every",
        "grading.timeout_s",
        "rollout.group_size",
        "grading.reward",
    ):
        assert message in str(e.value)
