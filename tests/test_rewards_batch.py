"""Parallel grader: order, pool reuse, hard deadlines (hung worker killed and replaced), crashes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from attnrl_jax.rewards.batch import Grader, grade_batch
from attnrl_jax.rewards.math import GradeResult, grade

HANG_S = 60.0  # a hung item; the test fails in finite time if its deadline is not enforced
SLOW_LIMIT_S = 30.0  # two 1 s deadlines plus scheduling on a loaded machine, well below HANG_S


def hang_or_grade(response: str, golds, *, time_budget_s: float) -> GradeResult:
    """Blocks without a timer when asked to: stands in for sympy stuck in one C call."""
    if response == "HANG":
        time.sleep(HANG_S)
    if response == "CRASH":
        os._exit(3)
    if response == "SLEEP":
        time.sleep(0.6)
        return GradeResult(True, "slept", "exact")
    return grade(response, golds, time_budget_s=time_budget_s)


@pytest.fixture(scope="module")
def hanging_grader():
    with Grader(timeout_s=1.0, num_workers=2, grade_fn=hang_or_grade) as g:
        yield g


def test_results_in_input_order_and_pool_is_reused(hanging_grader):
    responses = [f"\\boxed{{{i}}}" for i in range(40)]
    golds = [str(i if i % 3 else i + 1) for i in range(40)]
    first = hanging_grader.grade(responses, golds)
    assert [r.correct for r in first.results] == [i % 3 != 0 for i in range(40)]
    assert [r.extracted for r in first.results] == [str(i) for i in range(40)]
    pids = [w.proc.pid for w in hanging_grader._workers]
    second = hanging_grader.grade(responses, golds)
    assert second.results == first.results
    assert [w.proc.pid for w in hanging_grader._workers] == pids
    assert second.num_correct == 26 and second.accuracy == pytest.approx(26 / 40)


def test_hung_item_is_killed_counted_and_does_not_block(hanging_grader):
    responses = ["HANG"] + ["\\boxed{7}"] * 30 + ["HANG"]
    start = time.monotonic()
    out = hanging_grader.grade(responses, ["7"] * len(responses))
    elapsed = time.monotonic() - start
    assert out.num_timeouts == 2
    assert [r.reason for r in out.results][0] == "timeout"
    assert out.results[-1] == GradeResult(False, None, "timeout")
    assert all(r.correct for r in out.results[1:-1])
    assert elapsed < SLOW_LIMIT_S  # two deadlines of 1 s (in parallel or not), not HANG_S
    after = hanging_grader.grade(["\\boxed{1}"] * 4, ["1"] * 4)  # replacements serve new calls
    assert after.num_correct == 4 and after.num_timeouts == 0


def test_crashed_worker_gives_error_and_is_replaced(hanging_grader):
    out = hanging_grader.grade(["CRASH", "\\boxed{2}", "CRASH", "\\boxed{3}"], ["2", "2", "3", "3"])
    assert [r.reason for r in out.results] == ["error", "exact", "error", "exact"]
    assert out.num_errors == 2 and out.num_timeouts == 0


def test_interrupted_call_leaves_no_stale_results(hanging_grader):
    def interrupt(*_):
        raise KeyboardInterrupt

    hanging_grader.grade(["\\boxed{1}"] * 2, ["1"] * 2)  # workers ready: the items go out
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            hanging_grader.grade(["SLEEP", "SLEEP"], ["1", "1"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(0.5)  # the interrupted items would have finished by now
    out = hanging_grader.grade(["\\boxed{4}", "\\boxed{5}"], ["4", "6"])
    assert [(r.correct, r.extracted) for r in out.results] == [(True, "4"), (False, "5")]


def test_real_sympy_hang_is_bounded():
    out = grade_batch(
        ["\\boxed{(x+1)^{9999}}", "\\boxed{\\frac12}"],
        ["(x+2)^{9999}", "0.5"],
        timeout_s=1.0,
        num_workers=2,
    )
    assert out.results[0].correct is False
    assert out.results[0].reason in ("stage_timeout", "timeout")
    assert out.results[1].correct is True


def test_closed_grader_and_bad_lengths_raise():
    g = Grader(timeout_s=1.0, num_workers=1)
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        g.grade(["a", "b"], ["1"])
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        g.grade(["a"], ["1"])
    assert all(not w.proc.is_alive() for w in g._workers)


def test_reward_switch_reaches_the_workers():
    responses = ["\\boxed{(2,2)} and \\boxed{(6,2)}", "The final answer is $25$."]
    golds = ["(2, 2), (6, 2)", "25"]
    hybrid = grade_batch(responses, golds, timeout_s=5.0, num_workers=1)
    boxed = grade_batch(responses, golds, timeout_s=5.0, num_workers=1, reward="boxed")
    assert [r.reason for r in hybrid.results] == ["multi_box", "math_verify"]
    assert [r.reason for r in boxed.results] == ["mismatch", "no_answer"]
    with pytest.raises(ValueError, match="reward must be one of"):
        Grader(timeout_s=1.0, num_workers=1, reward="strict")
