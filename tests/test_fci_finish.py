"""The sampler's FCI finish over all rows at once (fci_decode.finish) equals the former per-row
code on thousands of random rows: mean and sum pooling, think steps, continuations, rows
without "\\n\\n", rows with more steps than the slots, empty responses."""

import numpy as np
import pytest

from attnrl_jax.sampling import fci_decode
from attnrl_jax.sampling.fci_decode import SamplerFci
from attnrl_jax.scoring.fci import FciConfig, finish_fci
from attnrl_jax.scoring.steps import SeparatorIds, segment_batch, segment_steps

NL2, NL, THINK = 1, 2, 3
SEPS = SeparatorIds(double_newline=(NL2,), newline=(NL, NL2), think_end=(THINK,))
LAYERS = 4


def reference_finish(raw, layouts, response_ids, option, num_layers):
    """The former per-row finish: FCI float32[S + 1] per row, or None (layout None: a
    continuation)."""
    rows, max_steps = raw.shape
    exact = [
        lay is not None
        and lay.num_steps + 1 <= max_steps
        and bool(np.isin(ids, option.seps.double_newline).any())
        for lay, ids in zip(layouts, response_ids, strict=True)
    ]
    key_weight = np.ones((rows, max_steps), np.float32)
    think = np.full(rows, -1, np.int32)
    for r, lay in enumerate(layouts):
        if not exact[r]:
            continue
        if option.config.pooling == "mean":
            sizes = np.array([end - start for start, end in lay.bounds], np.float32)
            key_weight[r, : len(sizes)] = 1.0 / np.maximum(sizes, 1.0)
        if lay.think_end_step is not None:
            think[r] = lay.think_end_step
    scores = finish_fci(raw * key_weight, think, option.config, num_layers)
    return [
        scores[r, : lay.num_steps + 1].copy() if ok else None
        for r, (lay, ok) in enumerate(zip(layouts, exact, strict=True))
    ]


@pytest.mark.parametrize("config", [FciConfig(), FciConfig("sum", 2, "mean", (0, 2))])
def test_finish_of_all_rows_equals_the_per_row_code(config):
    rng = np.random.default_rng(len(config.pooling))
    option = SamplerFci(SEPS, config, max_steps=16)
    ids, prompts = [], []
    for _ in range(2000):
        kind = rng.integers(4)
        weights = np.array([6.0, 1.0, 1.0, 0.3] + [1.0] * 6)
        if kind == 0:
            weights[NL2] = 0  # the "\n" or every-token fallback: no FCI from the sampler
        n = int(rng.integers(0, 60 if kind == 1 else 25))  # kind 1: often > 15 steps
        ids.append(rng.choice(10, size=n, p=weights / weights.sum()).astype(np.int32))
        prompts.append(int(rng.integers(1, 9)))
    fresh = rng.random(len(ids)) < 0.85
    raw = rng.random((len(ids), 16)).astype(np.float32)
    layouts = segment_batch(prompts, ids, SEPS)
    scores, exact = fci_decode.finish(raw, layouts, fresh, ids, option, LAYERS)
    per_row = [
        segment_steps(p, r, SEPS) if f else None
        for p, r, f in zip(prompts, ids, fresh, strict=True)
    ]
    want = reference_finish(raw, per_row, ids, option, LAYERS)
    assert exact.tolist() == [w is not None for w in want]
    assert 200 < exact.sum() < len(ids) - 200  # both kinds are common
    for r, w in enumerate(want):
        s = layouts.num_steps[r]
        if w is not None:
            np.testing.assert_array_equal(scores[r, : s + 1], w)  # the same float operations
        assert not scores[r, (s + 1 if w is not None else 0) :].any()
    assert scores.dtype == np.float32 and scores.shape == raw.shape
    with pytest.raises(ValueError, match="raw rows"):
        fci_decode.finish(raw[:-1], layouts, fresh, ids, option, LAYERS)
