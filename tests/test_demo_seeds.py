"""benchmarks/demo_seeds.py's config overrides: KEY=VALUE parsed as Python literals and applied
to the locked demo config, a misspelt key or a missing '=' an error. No JAX runs."""

import pytest

from attnrl_jax.demo.__main__ import load_config
from benchmarks.demo_seeds import apply_override, parse_override


def test_overrides_parse_literals_and_apply_to_the_demo_config():
    assert parse_override("loss.tis_cap=0") == ("loss.tis_cap", 0)
    assert parse_override("grading.reward=boxed") == ("grading.reward", "boxed")
    assert parse_override("off_policy=False") == ("off_policy", False)
    config = load_config()
    assert config.loss.tis_cap != 0 and config.grading.reward != "boxed"
    for text in ("loss.tis_cap=0.0", "grading.reward=boxed", "rollout.group_size=4"):
        apply_override(config, *parse_override(text))
    assert config.loss.tis_cap == 0.0 and config.grading.reward == "boxed"
    assert config.rollout.group_size == 4


def test_bad_overrides_are_errors():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_override("loss.tis_cap")
    with pytest.raises(KeyError):  # the config is locked: no new keys
        apply_override(load_config(), "loss.tis_capp", 0.0)
