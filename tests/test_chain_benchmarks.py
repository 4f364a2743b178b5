"""The chain study's statistics (benchmarks/sample_efficiency.paired, benchmarks/mechanism's
AUC and step picks) and its tables, on hand-made inputs: no model, no JAX compiles."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import mechanism  # noqa: E402
import sample_efficiency  # noqa: E402
from table_defs import (  # noqa: E402
    Rows,
    sample_efficiency_curve,
    sample_efficiency_paired,
    sample_efficiency_seeds,
)


def _run(method: str, seed: int, accuracy: float, earlier: float = 0.0) -> dict:
    curve = [{"accuracy": earlier}, {"accuracy": accuracy}]
    return {"task": "chain", "method": method, "seed": seed, "curve": curve}


def test_paired_differences_t_test_and_exact_sign_flip():
    base = [0.30, 0.35, 0.40, 0.33, 0.37]
    diffs = [0.05, 0.04, 0.06, 0.05, 0.03]
    runs = [_run("treerl", s, a) for s, a in enumerate(base)]
    # the earlier evaluation differs by -0.01 on every seed: the "mean" endpoint sees both
    runs += [
        _run("treerl_atb", s, a + d, earlier=-0.01)
        for s, (a, d) in enumerate(zip(base, diffs, strict=True))
    ]
    runs.append(_run("attnrl", 0, 0.5))  # one seed: no paired row
    rows = Rows("x", sample_efficiency.paired(runs, 1000))
    at = {"task": "chain", "method": "treerl_atb", "baseline": "treerl", "endpoint": "final"}
    assert rows.value("paired_difference_mean", **at) == pytest.approx(np.mean(diffs))
    assert rows.value("paired_difference_sd", **at) == pytest.approx(np.std(diffs, ddof=1))
    # t = mean / (sd / sqrt 5) = 0.046 / (0.01140 / 2.236) = 9.02 -> p = 0.00084 (4 dof)
    assert rows.value("paired_t_p", **at) == pytest.approx(8.4e-4, rel=0.02)
    # all five differences positive: only the all-plus and all-minus sign patterns reach |sum|
    assert rows.value("paired_sign_flip_p", **at) == pytest.approx(2 / 32)
    assert not rows.matching(method="attnrl")
    mean = at | {"endpoint": "mean"}
    assert rows.value("paired_difference_mean", **mean) == pytest.approx(np.mean(diffs) / 2 - 0.005)
    table = sample_efficiency_paired(rows)
    assert (
        "| chain | TreeRL + ATB vs TreeRL (entropy branching) | at the budget | 5 | +4.6 ± 1.1 "
        "| 0.001 |" in table
    )
    assert "| mean over the run's evaluations | 5 | +1.8 ± 0.6 |" in table
    # one primary comparison only (attnrl ran one seed): no Holm adjustment to make
    assert not rows.matching("paired_t_p_holm")


def test_holm_adjusts_the_two_primary_comparisons():
    assert sample_efficiency.holm([0.01, 0.04]) == pytest.approx([0.02, 0.04])
    assert sample_efficiency.holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert sample_efficiency.holm([0.03, 0.02]) == pytest.approx([0.04, 0.04])  # monotone
    assert sample_efficiency.holm([0.6, None]) == [0.6, None]
    base = [0.30, 0.35, 0.40, 0.33, 0.37]
    runs = [_run("treerl", s, a) for s, a in enumerate(base)]
    runs += [_run("treerl_atb", s, a + 0.05 + 0.01 * s) for s, a in enumerate(base)]
    runs += [_run("attnrl", s, a + (-0.02, 0.03, 0.01, -0.01, 0.02)[s]) for s, a in enumerate(base)]
    rows = Rows("x", sample_efficiency.paired(runs, 1000))
    at = {"task": "chain", "baseline": "treerl", "endpoint": "final"}
    p_atb, p_attn = (rows.value("paired_t_p", method=m, **at) for m in ("treerl_atb", "attnrl"))
    assert p_atb < p_attn
    assert rows.value("paired_t_p_holm", method="treerl_atb", **at) == pytest.approx(2 * p_atb)
    assert rows.value("paired_t_p_holm", method="attnrl", **at) == pytest.approx(p_attn)
    table = sample_efficiency_paired(rows)
    assert f"| {p_atb:.3f} ({2 * p_atb:.3f}) |" in table


def test_shards_split_the_runs_between_processes(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(sample_efficiency, "warm_start", lambda task, out: None)
    monkeypatch.setattr(sample_efficiency, "task_config", lambda *a: None)
    monkeypatch.setattr(sample_efficiency, "held_out_accuracy", lambda *a: lambda p: 0.5)
    monkeypatch.setattr(
        sample_efficiency,
        "run_one",
        lambda t, m, s, *a: ran.append((m, s)) or {"task": t, "method": m, "seed": s},
    )
    (tmp_path / "warm_starts.json").write_text('{"chain": 0.5}')
    argv = ["--out", str(tmp_path), "--tasks", "chain", "--methods", "treerl,attnrl,grpo"]
    for k in (0, 1):
        sample_efficiency.main([*argv, "--seeds", "0,1", "--shard", f"{k}/2"])
    assert ran[:3] == [("treerl", 0), ("grpo", 0), ("attnrl", 1)]
    assert sorted(ran) == sorted((m, s) for m in ("treerl", "attnrl", "grpo") for s in (0, 1))
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6
    with pytest.raises(SystemExit):
        sample_efficiency.main([*argv, "--shard", "2/2"])


def test_auc_counts_ties_as_half_and_needs_both_classes():
    labels = np.array([True, False, True, False])
    assert mechanism.auc(np.array([3.0, 1.0, 2.0, 0.0]), labels) == 1.0
    assert mechanism.auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 0.25
    assert mechanism.auc(np.ones(4), labels) == 0.5
    assert mechanism.auc(np.ones(2), np.array([True, True])) is None


def test_step_picks_stay_among_candidates():
    # 6 quantities + the answer step: candidates 2..6; FCI can score steps k with k + 4 <= 7
    fci = np.array([0, 0, 0.1, 0.5, 0.2, 0, 0, 0])
    entropy = np.array([0, 9.0, 0.3, 0.1, 0.2, 0.4, 0.8, 9.0])  # steps 1 and 7 are not candidates
    item = {"n": 6, "num_steps": 7, "fci": fci, "step_entropy": entropy}
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = mechanism.pick_steps(item, rng, delta=4)
        assert p["fci"] == 3 and p["entropy"] == 6
        assert 2 <= p["random"] <= 6 and p["random_scored"] in (2, 3)


def test_token_roles_label_each_part_of_a_step():
    solution = "a=6+1;a7\n\nc=a-b=7-3;c4\n\nThe answer is \\boxed{4}."
    roles = mechanism.token_roles(solution)
    assert len(roles) == len(solution)
    labelled = "".join({"name": "N", "definition": "D", "copied value": "V", "result": "R",
                        None: "."}[r] for r in roles)  # fmt: skip
    assert labelled[:24] == "N.DDD..R..N.DDD.VVV..R.."
    assert set(labelled[24:]) == {"."}


def _full_run(method: str, seed: int, accuracies: list[float]) -> dict:
    step = {"tokens_generated": 100, "valid_ratio": 1.0, "prompt_batch_size": 8, "sequences": 40,
            "mc_valid_ratio": 0.5, "time_step": 2.0, "time_sampling": 1.0, "time_scoring": 0.5,
            "time_update": 0.5}  # fmt: skip
    curve = [{"step": i + 1, "tokens": 100 * (i + 1), "wall": 2.0 * (i + 1), "accuracy": a}
             for i, a in enumerate(accuracies)]  # fmt: skip
    return {"task": "chain", "method": method, "seed": seed, "curve": curve,
            "steps": [step] * len(accuracies)}  # fmt: skip


def test_curve_and_seed_tables_from_runs():
    runs = [_full_run("treerl", 0, [0.5, 0.6]), _full_run("treerl", 3, [0.7, 0.8])]
    runs.append(_full_run("attnrl", 0, [0.4, 0.2]))
    rows = Rows("x", sample_efficiency.json_rows(sample_efficiency.summarize(runs, {}), 200))
    at = {"task": "chain", "method": "treerl", "evaluation": 2}
    assert rows.value("evaluation_accuracy_mean", **at) == pytest.approx(0.7)
    assert rows.value("evaluation_accuracy_sd", **at) == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert rows.value("evaluation_tokens", **at) == 200
    curve = sample_efficiency_curve(rows)
    assert (
        "| chain | TreeRL (entropy branching) | 0.600 ± 0.141 (0k) | 0.700 ± 0.141 (0k) |" in curve
    )
    seeds = sample_efficiency_seeds(rows)
    assert "| task | method | seed 0 | seed 3 |" in seeds
    assert "| chain | TreeRL (entropy branching) | 0.600 | 0.800 |" in seeds
    assert "| chain | AttnRL | 0.200 |  |" in seeds


def test_accuracy_after_equal_steps_interpolates_from_the_warm_start():
    # evaluations at steps 1 and 2 (_full_run): a run whose last step is 2 sets the common step
    short = _full_run("treerl_atb", 0, [0.6, 0.8])
    long = _full_run("treerl", 0, [0.5, 0.6, 0.7, 0.9])
    assert sample_efficiency.accuracy_at_step(long, 2, 0.4) == pytest.approx(0.6)
    assert sample_efficiency.accuracy_at_step(long, 0.5, 0.4) == pytest.approx(0.45)
    rows = Rows("x", sample_efficiency.at_equal_steps([short, long], {"chain": 0.4}, 400))
    assert rows.value("accuracy_at_step_mean", method="treerl") == pytest.approx(0.6)
    assert rows.row("accuracy_at_step_mean", method="treerl_atb")["params"]["step"] == 2
