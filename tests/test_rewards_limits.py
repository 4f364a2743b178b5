"""The in-process time limit and the pre-sympy guards."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time

import pytest

from attnrl_jax.rewards.limits import StageTimeout, intractable, time_limit
from attnrl_jax.rewards.math import grade


def test_time_limit_interrupts_python_code():
    start = time.monotonic()
    with pytest.raises(StageTimeout), time_limit(0.2):
        while True:
            pass
    assert time.monotonic() - start < 1.0


def test_time_limit_fires_again_after_a_swallowed_raise():
    # CI once lost 80 s when the raise landed inside a jax gc callback, which swallows it
    start = time.monotonic()
    with pytest.raises(StageTimeout), time_limit(0.1):
        try:
            while True:
                pass
        except StageTimeout:
            pass  # swallowed, as an unraisable-exception hook would
        while time.monotonic() - start < 5.0:
            pass
    assert time.monotonic() - start < 1.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_never_raises_inside_a_gc_callback():
    # jax registers a gc callback; a raise there goes to sys.unraisablehook, not to the stage
    def slow_callback(phase, info):
        if phase == "start":
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                pass

    unraisable, old_hook = [], sys.unraisablehook
    gc.callbacks.append(slow_callback)
    sys.unraisablehook = unraisable.append
    start = time.monotonic()
    try:
        with pytest.raises(StageTimeout), time_limit(0.05):
            while True:  # the alarm comes during the first collection, then Python work
                gc.collect()
                end = time.monotonic() + 0.2
                while time.monotonic() < end:
                    pass
    finally:
        gc.callbacks.remove(slow_callback)
        sys.unraisablehook = old_hook
    assert unraisable == [] and time.monotonic() - start < 2.0


def test_time_limit_zero_budget_raises_at_once():
    with pytest.raises(StageTimeout), time_limit(0.0):
        pass


def test_time_limit_keeps_the_callers_timer_and_handler():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with time_limit(5.0):
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.05 < left < 0.35  # still counting from 0.5 s, not restarted
        time.sleep(0.5)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_grade_works_off_the_main_thread():
    out = {}

    def run():
        # (1,2) vs [1,2] and x-forms reach sympy and Math-Verify, which must not use signals here
        out["a"] = grade("\\boxed{\\frac{x}{2}}", "0.5x")
        out["b"] = grade("\\boxed{\\sqrt{2}/2}", "\\frac{1}{\\sqrt2}")
        out["c"] = grade("\\boxed{y}", "z")

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert out["a"].correct and out["b"].correct and not out["c"].correct


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("9^{9^{9^9}}", "exponent_tower"),
        ("9^9^9^9", "exponent_tower"),
        ("9**9**9", "exponent_tower"),
        ("(10^{299})^{9999}", "exponent_tower"),
        ("2^{100000}", "huge_exponent"),
        ("123456^{99999}", "huge_exponent"),
        ("100001!", "huge_factorial"),
        ("(10^5)!", "huge_factorial"),
        ("1" * 301, "too_many_digits"),
        ("(" * 13 + "1" + ")" * 13, "too_deep"),
        ("x+" * 300, "too_long"),
        ("2^{100}", None),
        ("(x+1)^{3}", None),
        ("5!", None),
        ("\\frac{\\sqrt{3}}{2}", None),
        ("e^{i\\pi}", None),
    ],
)
def test_intractable(expr: str, reason: str | None):
    assert intractable(expr) == reason
