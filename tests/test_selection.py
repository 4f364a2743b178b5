"""ATB branch selection (every rule of ALGORITHM.md section 3) and the baseline selectors:
golden examples through the one-response API, and the jitted batch against the former host
implementation (tests/reference_selection.py) on thousands of random responses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_selection as ref
from reference_selection import atb_threshold

from attnrl_jax.scoring.selection import (
    SELECTORS,
    SelectionConfig,
    select,
    select_branch_points,
    selection_inputs,
)
from attnrl_jax.scoring.steps import SeparatorIds, StepLayout, StepLayouts, segment_steps


def make_layout(prompt_len: int, step_lens: list[int]) -> StepLayout:
    ends = np.cumsum([prompt_len, *step_lens]).tolist()
    bounds = ((0, prompt_len),) + tuple(zip(ends[:-1], ends[1:], strict=True))
    return StepLayout(prompt_len=prompt_len, bounds=bounds, think_end_step=None)


def atb(layout, step_scores, distance=0, n=2, rho=0.2):
    """ATB on response-step scores (step 0's score prepended)."""
    cfg = SelectionConfig(rho=rho, num_points=n, min_token_distance=distance)
    return select_branch_points(layout, cfg, fci=np.array([7.0, *step_scores]))


def test_threshold_matches_numpy_and_torch_quantile():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 5, 17, 100):
        y = rng.uniform(0.1, 1.0, size)
        for rho in (0.0, 0.2, 0.5, 0.9, 1.0):
            got = atb_threshold(y, rho)
            assert got == pytest.approx(np.quantile(y, 1 - rho, method="linear"), rel=1e-12)
            assert got == pytest.approx(torch.quantile(torch.tensor(y), 1 - rho).item(), rel=1e-12)
    # interpolation: 0.8 quantile of 0..4 sits at position 3.2 -> 3.2
    assert atb_threshold(np.arange(5.0), 0.2) == pytest.approx(3.2)


def test_zero_threshold_falls_back_to_smallest_positive():
    assert atb_threshold(np.array([0.0] * 9 + [0.5, 0.7]), 0.2) == 0.5
    assert atb_threshold(np.zeros(4), 0.2) == 0.0


def test_candidates_in_step_order_not_score_order():
    lay = make_layout(4, [3] * 10)
    scores = [0, 5, 1, 9, 1, 1, 1, 1, 1, 1]  # threshold 1.8: steps 2 (5) and 4 (9)
    assert atb(lay, scores) == [3, 9]


def test_step_one_is_never_chosen_and_fallback_fills():
    lay = make_layout(4, [3] * 6)
    # threshold 8: candidates are step 1 (9) and step 5 (8); step 1 dropped, fallback adds step 2
    assert atb(lay, [9, 1, 5, 1, 8, 1]) == [12, 3]


def test_ties_at_threshold_are_candidates():
    lay = make_layout(4, [3] * 5)
    assert atb(lay, [0, 2, 2, 2, 0]) == [3, 6]  # threshold 2 = the tied top values
    assert atb(lay, [1, 1, 1, 1, 1]) == [3, 6]
    assert atb(lay, [0, 2, 2, 2, 0], n=3) == [3, 6, 9]


def test_zero_fallback_excludes_zero_steps():
    lay = make_layout(4, [3] * 20)
    scores = [0.0] * 20
    scores[6], scores[9] = 0.3, 0.2  # quantile 0 -> threshold 0.2: steps 7 and 10, in step order
    assert atb(lay, scores) == [18, 27]


def test_all_zero_scores_take_steps_in_order():
    lay = make_layout(4, [3] * 6)
    assert atb(lay, [0] * 6) == [3, 6]
    assert atb(lay, [0] * 6, distance=512) == [3, 6]  # all rejected by distance: fallback


def test_fewer_steps_than_points():
    assert atb(make_layout(4, []), []) == []
    assert atb(make_layout(4, [5]), [1.0]) == []  # step 1 only: nothing to branch from
    assert atb(make_layout(4, [5, 6]), [0.0, 0.5]) == [5, 5]  # step 2 then its duplicate
    assert atb(make_layout(4, [5, 6, 2]), [0.0, 0.5, 0.1]) == [5, 11]
    assert atb(make_layout(4, [5, 6, 2]), [0.0, 0.5, 0.1], n=0) == []


def test_duplicate_fallback_cycles_through_early_steps():
    lay = make_layout(4, [3, 3, 3])
    assert atb(lay, [1, 1, 1], distance=10_000, n=5) == [3, 6, 3, 6, 3]


def test_fallback_skips_offsets_already_chosen():
    lay = make_layout(4, [3] * 10)
    scores = [0] * 9 + [1.0]  # only step 10 is a candidate
    assert atb(lay, scores, n=3) == [27, 3, 6]


def test_response_without_separator_every_token_is_a_step():
    seps = SeparatorIds(double_newline=(9,), newline=(8, 9), think_end=())
    lay = segment_steps(2, [1, 2, 3, 4, 5, 6], seps)
    assert lay.num_steps == 6
    assert atb(lay, [0, 0, 0, 0.4, 0, 0.9]) == [3, 5]  # steps 4 and 6 start at offsets 3 and 5
    assert atb(lay, [0, 0.1, 0.2, 0.4, 0.3, 0.9], n=3) == [3, 5, 1]


def test_min_token_distance_counts_the_prompt_and_gaps():
    scores = [0.0] * 80
    for step in (2, 3, 54, 55, 56):
        scores[step - 1] = 1.0
    # prompt 500, steps of 10: step k starts at 500 + 10 (k - 1)
    lay = make_layout(500, [10] * 80)
    # step 2 starts at 510 < 512; step 3 at 520 ok (ends 530); 54 and 55 start 500 and 510 after
    # 530; step 56 starts 520 after: accepted
    assert atb(lay, scores, distance=512) == [20, 550]
    assert atb(lay, scores, distance=0) == [10, 20]
    # a short prompt: steps 2 and 3 start too early; step 54 (start 542) accepted, 55-56 too close
    lay = make_layout(12, [10] * 80)
    assert atb(lay, scores, distance=512) == [530, 10]


def test_min_token_distance_is_inclusive():
    lay = make_layout(502, [10, 10, 512, 10, 10])  # step 2 is [512, 522); step 4 starts at 1034
    assert atb(lay, [0, 1, 0, 1, 0], distance=512) == [10, 532]  # gap 1034 - 522 = 512
    assert atb(lay, [0, 1, 0, 1, 0], distance=513) == [532, 10]


def test_fci_shape_checks_and_padding():
    lay = make_layout(4, [3, 3, 3])
    cfg = SelectionConfig(min_token_distance=0)
    padded = np.array([5.0, 0, 1, 0, 9, 9, 9])  # trailing padding slots are ignored
    assert select_branch_points(lay, cfg, fci=padded) == [3, 6]
    with pytest.raises(ValueError, match="fci"):
        select_branch_points(lay, cfg, fci=np.ones(3))
    with pytest.raises(ValueError, match="FCI"):
        select_branch_points(lay, cfg)


def test_entropy_selector():
    lay = make_layout(5, [4, 3])  # 7 response tokens
    cfg = SelectionConfig(method="entropy", num_points=2)
    ent = np.array([0.9, 0.1, 0.5, 0.5, 0.2, 0.3, 5.0, 99.0])  # last token and padding never chosen
    assert select_branch_points(lay, cfg, entropy=ent) == [0, 2]  # 3 ties 2, earlier wins
    cfg3 = SelectionConfig(method="entropy", num_points=3)
    assert select_branch_points(lay, cfg3, entropy=ent) == [0, 2, 3]
    short = make_layout(5, [2])
    assert select_branch_points(short, cfg, entropy=np.array([1.0, 2.0])) == [0]
    with pytest.raises(ValueError, match="entropy"):
        select_branch_points(lay, cfg, entropy=np.ones(3))


def test_random_selector_is_seeded_and_skips_step_one():
    lay = make_layout(4, [3] * 8)
    cfg = SelectionConfig(method="random", num_points=2)
    starts = {3 * k for k in range(1, 8)}  # steps 2..8
    draws = [select_branch_points(lay, cfg, rng=np.random.default_rng(s)) for s in range(20)]
    assert all(len(set(d)) == 2 and set(d) <= starts for d in draws)
    assert len({tuple(d) for d in draws}) > 5
    again = select_branch_points(lay, cfg, rng=np.random.default_rng(3))
    assert again == draws[3]
    rng = np.random.default_rng(0)
    assert select_branch_points(make_layout(4, [3, 3]), cfg, rng=rng) == [3, 3]
    assert select_branch_points(make_layout(4, [3]), cfg, rng=rng) == []
    with pytest.raises(ValueError, match="rng"):
        select_branch_points(lay, cfg)


def test_earliest_and_none_selectors():
    earliest = SelectionConfig(method="earliest", num_points=2)
    assert select_branch_points(make_layout(4, [3, 4, 5, 6]), earliest) == [3, 7]
    assert select_branch_points(make_layout(4, [3, 4]), earliest) == [3, 3]
    none = SelectionConfig(method="none")
    assert select_branch_points(make_layout(4, [3, 4, 5]), none, fci=np.ones(4)) == []


def test_registry_and_config_validation(monkeypatch):
    assert {"atb", "entropy", "random", "earliest", "none"} <= set(SELECTORS)
    assert SelectionConfig().method == "atb"

    def last(row, key, params, n):  # a per-row jax selector: the last response token
        return jnp.full(n, row.response_len - 1), jnp.arange(n) < 1

    monkeypatch.setitem(SELECTORS, "last", last)
    assert select_branch_points(make_layout(4, [3, 4]), SelectionConfig(method="last")) == [6]
    with pytest.raises(ValueError, match="unknown selection method"):
        SelectionConfig(method="attention")
    with pytest.raises(ValueError, match="rho"):
        SelectionConfig(rho=1.5)
    with pytest.raises(ValueError, match="num_points"):
        SelectionConfig(num_points=-1)


# --- the jitted batch against the host reference on random responses ---------------------------


def random_case(rng):
    """A random response: layout (some long, some one- or zero-step), FCI with ties and zeros,
    a think mask, entropies with ties."""
    s = int(rng.choice([0, 1, 2, 3, 5, 6, 7, 11, 21, 41, int(rng.integers(1, 120))]))
    prompt = int(rng.integers(0, 700))
    lay = make_layout(prompt, rng.integers(1, 90, s).tolist())
    kind = rng.integers(4)
    if kind == 0:  # a coarse grid: many exact ties
        y = rng.integers(0, 4, s) / 8.0
    elif kind == 1:  # mostly zeros (masked steps)
        y = np.where(rng.random(s) < 0.8, 0.0, rng.random(s))
    elif kind == 2:
        y = np.full(s, float(rng.integers(0, 2)) * 0.3)
    else:
        y = rng.random(s) * 10.0 ** rng.integers(-3, 3)
    fci = np.concatenate([[rng.random()], y]).astype(np.float32)
    think = None if rng.random() < 0.5 or s == 0 else int(rng.integers(1, s + 1))
    lay = type(lay)(lay.prompt_len, lay.bounds, think)
    masked = fci.copy()
    if think is not None:
        masked[think:] = 0.0  # what the scoring pass hands the host reference
    r = lay.response_len
    ent = (rng.integers(0, 5, r) / 4.0 if rng.random() < 0.5 else rng.random(r)).astype(np.float32)
    return lay, fci, masked, ent


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(123)
    return [random_case(rng) for _ in range(2000)]


def batch_points(cases, cfg, key=None):
    inputs = selection_inputs([c[0] for c in cases], [c[1] for c in cases], [c[3] for c in cases])
    offsets, valid = jax.device_get(select(inputs, jax.random.key(0) if key is None else key, cfg))
    return [o[v].tolist() for o, v in zip(offsets[: len(cases)], valid[: len(cases)], strict=True)]


@pytest.mark.parametrize(
    "rho,n,distance",
    [
        (0.2, 2, 512),
        (0.2, 2, 0),
        (0.35, 3, 100),
        (0.1, 1, 30),
        (0.7, 4, 0),
        (0.0, 2, 0),
        (1.0, 2, 9),
    ],
)
def test_atb_batch_equals_host_reference(cases, rho, n, distance):
    cfg = SelectionConfig(rho=rho, num_points=n, min_token_distance=distance)
    host = ref.SelectionConfig(rho=rho, num_points=n, min_token_distance=distance)
    got = batch_points(cases, cfg)
    for (lay, _, masked, _), points in zip(cases, got, strict=True):
        assert points == ref.select_branch_points(lay, host, fci=masked), (lay, masked)


@pytest.mark.parametrize("method,n", [("entropy", 2), ("entropy", 5), ("earliest", 3), ("none", 2)])
def test_baselines_batch_equal_host_reference(cases, method, n):
    got = batch_points(cases, SelectionConfig(method=method, num_points=n))
    host = ref.SelectionConfig(method=method, num_points=n)
    for (lay, _, _, ent), points in zip(cases, got, strict=True):
        assert points == ref.select_branch_points(lay, host, entropy=ent)


def test_random_batch_follows_the_host_rules_and_distribution(cases):
    """Random draws cannot equal numpy's stream: check the rules per case, the uniform law over
    ordered pairs, and that a row's draw does not depend on the rest of the batch."""
    cfg = SelectionConfig(method="random", num_points=2)
    got = batch_points(cases, cfg)
    for (lay, *_), points in zip(cases, got, strict=True):
        s = lay.num_steps
        starts = [lay.bounds[k][0] - lay.prompt_len for k in range(2, s + 1)]
        if s < 2:
            assert points == []
        elif s == 2:
            assert points == [starts[0]] * 2
        else:
            assert len(set(points)) == 2 and set(points) <= set(starts)
    assert batch_points(cases[:7], cfg) == got[:7]  # same rows, smaller batch: same draws
    lay = make_layout(4, [3] * 4)  # steps 2..4: 6 ordered pairs
    many = batch_points([(lay, np.zeros(5), None, np.zeros(12))] * 3000, cfg)
    pairs, counts = np.unique(np.array(many), axis=0, return_counts=True)
    assert len(pairs) == 6  # each ordered pair ~500 times, sd 20.4: 5 sd bounds
    assert counts.min() > 500 - 102 and counts.max() < 500 + 102


def naive_inputs(cases, rows):
    """The former per-response padding loop (starts, ends, fci, entropy, per-row fields)."""
    s_pad = max(16, 1 << max(0, max(c[0].num_steps for c in cases) - 1).bit_length())
    r_pad = max(64, 1 << max(0, max(c[0].response_len for c in cases) - 1).bit_length())
    out = {k: np.zeros((rows, s_pad), np.float32) for k in ("starts", "ends", "fci")}
    out["entropy"] = np.zeros((rows, r_pad), np.float32)
    for k in ("num_steps", "prompt_len", "response_len", "think_end_step"):
        out[k] = np.zeros(rows, np.int32)
    for i, (lay, fci, _, ent) in enumerate(cases):
        s = lay.num_steps
        for c, (a, b) in enumerate(lay.bounds[1:]):
            out["starts"][i, c], out["ends"][i, c] = a, b
        out["fci"][i, :s] = fci[1 : s + 1]
        out["entropy"][i, : lay.response_len] = ent[: lay.response_len]
        out["num_steps"][i], out["prompt_len"][i] = s, lay.prompt_len
        out["response_len"][i] = lay.response_len
        out["think_end_step"][i] = -1 if lay.think_end_step is None else lay.think_end_step
    return out


def test_selection_inputs_padding_forms_agree(cases):
    """Per-response lists, one padded numpy array, one device array and a flat StepLayouts all
    give the arrays of the former per-response loop (exact: copies, no arithmetic)."""
    cases = cases[:500]
    layouts = [c[0] for c in cases]
    want = naive_inputs(cases, 512)
    by_list = selection_inputs(layouts, [c[1] for c in cases], [c[3] for c in cases])
    for name, value in want.items():
        np.testing.assert_array_equal(getattr(by_list, name), value, err_msg=name)
    s_max = max(lay.num_steps for lay in layouts)
    padded = np.full((len(cases), s_max + 3), np.nan, np.float32)  # padding is never read
    for i, (lay, fci, _, _) in enumerate(cases):
        padded[i, : lay.num_steps + 1] = fci[: lay.num_steps + 1]
    flat = StepLayouts.stack(layouts)
    host = selection_inputs(flat, padded)
    device = selection_inputs(flat, jax.device_put(padded))
    assert isinstance(device.fci, jax.Array) and isinstance(host.fci, np.ndarray)
    np.testing.assert_array_equal(host.fci, want["fci"])
    np.testing.assert_array_equal(np.asarray(device.fci), want["fci"])
    np.testing.assert_array_equal(host.starts, want["starts"])
    cfg = SelectionConfig(num_points=3, min_token_distance=40)
    got = [jax.device_get(select(x, jax.random.key(0), cfg)) for x in (by_list, device)]
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    with pytest.raises(ValueError, match="cannot hold"):
        selection_inputs(flat, padded[:, : s_max - 1])
    with pytest.raises(ValueError, match="fci arrays for"):
        selection_inputs(flat, [c[1] for c in cases[:-1]])
