"""Step segmentation: separator sets, per-response fallbacks, </think>, and the padded arrays."""

import copy
import pickle

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.scoring.steps import (
    SeparatorIds,
    StepLayout,
    StepLayouts,
    pad_step_ids,
    segment_batch,
    segment_steps,
    step_bucket,
    token_step_ids,
)

# Hand-built word-level vocabulary: "\n\n" inside merged tokens, "</think>" as three tokens.
WORDS = ["[UNK]", "a", "b", ".\n\n", "\n", "\n\n", "</", "think", ">", "x\ny", "!\n\n!"]
A, B, DOT2, NL, NL2, LT, THINK, GT, XNY, BANG = range(1, 11)


@pytest.fixture(scope="module")
def word_tok():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    pattern = "|".join(sorted((w.replace(".", r"\.") for w in WORDS[1:]), key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def word_seps(word_tok):
    return SeparatorIds.from_tokenizer(word_tok)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


def test_separator_ids_from_word_tokenizer(word_seps):
    assert word_seps.double_newline == (DOT2, NL2, BANG)
    assert word_seps.newline == (DOT2, NL, NL2, XNY, BANG)
    assert word_seps.think_end == (LT, THINK, GT)
    hash(word_seps)  # usable as a static jit argument


def test_separator_ids_from_tiny_bpe(tiny):
    seps = SeparatorIds.from_tokenizer(tiny)
    texts = [tiny.decode([i]) for i in range(len(tiny))]
    assert set(seps.double_newline) == {i for i, t in enumerate(texts) if "\n\n" in t}
    assert set(seps.double_newline) < set(seps.newline)
    assert tiny.convert_tokens_to_ids(tiny.tokenize(".\n\n"))[0] in seps.double_newline
    assert seps.think_end == (tiny.convert_tokens_to_ids("</think>"),)


def test_double_newline_cuts_after_merged_tokens_and_ignores_single_newlines(word_seps):
    # response: a .\n\n b \n a \n\n b  -> steps [a .\n\n] [b \n a \n\n] [b]
    lay = segment_steps(3, [A, DOT2, B, NL, A, NL2, B], word_seps)
    assert lay.bounds == ((0, 3), (3, 5), (5, 9), (9, 10))
    assert lay.num_steps == 3 and lay.total_len == 10 and lay.response_len == 7
    assert lay.think_end_step is None


def test_newline_fallback_then_every_token(word_seps):
    assert segment_steps(2, [A, NL, B, XNY, A], word_seps).bounds == (
        (0, 2),
        (2, 4),
        (4, 6),
        (6, 7),
    )
    assert segment_steps(1, [A, B, A], word_seps).bounds == ((0, 1), (1, 2), (2, 3), (3, 4))


def test_fallback_is_chosen_per_response(word_seps):
    with_double = segment_steps(0, [A, NL, B, NL2, A], word_seps)
    only_single = segment_steps(0, [A, NL, B, NL, A], word_seps)
    assert with_double.bounds[1:] == ((0, 4), (4, 5))
    assert only_single.bounds[1:] == ((0, 2), (2, 4), (4, 5))


def test_separator_at_end_adds_no_empty_step_and_empty_response(word_seps):
    assert segment_steps(2, [A, DOT2, B, NL2], word_seps).bounds == ((0, 2), (2, 4), (4, 6))
    empty = segment_steps(4, [], word_seps)
    assert empty.bounds == ((0, 4),) and empty.num_steps == 0 and empty.think_end_step is None


def test_multi_token_think_end(word_seps):
    # steps: [a </ think > .\n\n] [b </ think > b]; last full "</think>" ends at index 8 (step 2)
    ids = [A, LT, THINK, GT, DOT2, B, LT, THINK, GT, B]
    assert segment_steps(5, ids, word_seps).think_end_step == 2
    # only the first occurrence is complete; a stray ">" later is not a </think>
    ids = [A, LT, THINK, GT, DOT2, B, LT, THINK, B, DOT2, GT]
    assert segment_steps(5, ids, word_seps).think_end_step == 1
    assert segment_steps(5, [A, THINK, GT, NL2, GT], word_seps).think_end_step is None


def test_single_token_think_end_on_real_text(tiny):
    seps = SeparatorIds.from_tokenizer(tiny)
    text = "<think>\nWe need x.\n\nSo x = 2.</think>\n\nThe answer is \\boxed{2}.<|im_end|>"
    ids = tiny(text)["input_ids"]
    lay = segment_steps(7, ids, seps)
    pieces = [tiny.decode(ids[s - 7 : e - 7]) for s, e in lay.bounds[1:]]
    assert "".join(pieces) == text
    assert pieces == [
        "<think>\nWe need x.\n\n",
        "So x = 2.</think>\n\n",
        "The answer is \\boxed{2}.<|im_end|>",
    ]
    assert lay.think_end_step == 2


def test_token_step_ids_pads_with_minus_one():
    lay = StepLayout(prompt_len=2, bounds=((0, 2), (2, 3), (3, 6)), think_end_step=None)
    np.testing.assert_array_equal(token_step_ids(lay, 8), [0, 0, 1, 2, 2, 2, -1, -1])
    assert token_step_ids(lay, 6).dtype == np.int32
    with pytest.raises(ValueError, match="total_len"):
        token_step_ids(lay, 5)


def test_pad_step_ids_batch(word_seps):
    long = segment_steps(2, [A, NL2] * 8 + [B], word_seps)  # S = 9 -> 10 slots -> bucket 16
    short = segment_steps(3, [A, LT, THINK, GT, NL2, B], word_seps)
    batch = pad_step_ids([long, short], total_len=24)
    assert batch.step_ids.shape == (2, 24) and batch.step_ids.dtype == np.int32
    np.testing.assert_array_equal(batch.step_ids[1, :11], [0, 0, 0, 1, 1, 1, 1, 1, 2, -1, -1])
    np.testing.assert_array_equal(batch.step_ids[0], token_step_ids(long, 24))
    np.testing.assert_array_equal(batch.num_steps, [9, 2])
    np.testing.assert_array_equal(batch.think_end_step, [-1, 1])
    assert batch.max_steps == 16
    assert pad_step_ids([short]).step_ids.shape == (1, 9)
    assert pad_step_ids([short]).max_steps == 8
    with pytest.raises(ValueError, match="max_steps"):
        pad_step_ids([long], max_steps=8)


def test_step_bucket():
    assert [step_bucket(n) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]
    assert step_bucket(3, minimum=1) == 4


def test_think_end_opening_a_step_belongs_to_that_step():
    seps = SeparatorIds(double_newline=(NL2,), newline=(NL, NL2), think_end=(THINK,))
    assert segment_steps(1, [A, NL2, THINK, B], seps).think_end_step == 2
    assert segment_steps(1, [A, THINK, NL2, B], seps).think_end_step == 1


def random_layouts(rng, n):
    """Random layouts: zero-step responses, one-token steps, think markers."""
    out = []
    for _ in range(n):
        s = int(rng.choice([0, 1, 2, int(rng.integers(3, 40))]))
        prompt = int(rng.integers(0, 50))
        ends = prompt + np.cumsum(rng.integers(1, 9, s))
        think = None if s == 0 or rng.random() < 0.5 else int(rng.integers(1, s + 1))
        out.append(StepLayout.from_ends(prompt, ends, think))
    return out


def test_step_layout_ends_and_bounds_agree():
    lay = StepLayout(prompt_len=2, bounds=((0, 2), (2, 3), (3, 6)), think_end_step=2)
    assert lay.ends.tolist() == [3, 6] and lay.ends.dtype == np.int32
    assert lay == StepLayout.from_ends(2, np.array([3, 6]), 2)
    assert hash(lay) == hash(StepLayout.from_ends(2, [3, 6], 2))
    assert lay != StepLayout.from_ends(2, [3, 6], None)
    assert (lay.num_steps, lay.total_len, lay.response_len) == (2, 6, 4)
    empty = StepLayout.from_ends(4, [], None)
    assert empty.bounds == ((0, 4),) and (empty.total_len, empty.response_len) == (4, 0)
    assert pickle.loads(pickle.dumps(lay)) == lay and copy.deepcopy(lay) == lay
    with pytest.raises(AttributeError, match="immutable"):
        lay.prompt_len = 3
    with pytest.raises(ValueError):
        lay.ends[0] = 9  # read-only: the flat batch and the bounds cannot drift apart
    with pytest.raises(ValueError, match="contiguous"):
        StepLayout(prompt_len=2, bounds=((0, 2), (2, 3), (4, 6)), think_end_step=None)
    with pytest.raises(ValueError, match="start with"):
        StepLayout(prompt_len=2, bounds=((0, 3), (3, 6)), think_end_step=None)


def test_step_layouts_flat_batch_matches_each_layout():
    rng = np.random.default_rng(5)
    layouts = random_layouts(rng, 300)
    flat = StepLayouts.stack(layouts)
    assert StepLayouts.stack(flat) is flat and len(flat) == 300
    assert list(flat) == layouts and flat[-1] == layouts[-1]
    np.testing.assert_array_equal(flat.total_len, [lay.total_len for lay in layouts])
    np.testing.assert_array_equal(flat.response_len, [lay.response_len for lay in layouts])
    starts, ends = flat.padded_bounds(320, 64)
    want_s, want_e = np.zeros((320, 64), np.int32), np.zeros((320, 64), np.int32)
    for i, lay in enumerate(layouts):  # the per-response loop the flat form replaces
        for c, (a, b) in enumerate(lay.bounds[1:]):
            want_s[i, c], want_e[i, c] = a, b
    np.testing.assert_array_equal(starts, want_s)
    np.testing.assert_array_equal(ends, want_e)
    with pytest.raises(ValueError, match="cannot hold"):
        flat.padded_bounds(320, 8)
    with pytest.raises(IndexError):
        flat[300]
    assert len(StepLayouts.stack([])) == 0


def reference_segment(prompt_len, ids, seps):
    """The former per-response segmentation (np.isin per response, a tuple of bounds)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    is_sep = np.isin(ids, seps.double_newline)
    if not is_sep.any():
        is_sep = np.isin(ids, seps.newline)
    if not is_sep.any():
        is_sep = np.ones_like(is_sep)
    ends = (np.flatnonzero(is_sep) + 1).tolist()
    if ids.size and (not ends or ends[-1] != ids.size):
        ends.append(ids.size)
    bounds = ((0, prompt_len),) + tuple(
        (prompt_len + s, prompt_len + e) for s, e in zip([0, *ends], ends, strict=False)
    )
    think, n = None, len(seps.think_end)
    if n and len(ids) >= n:
        windows = np.lib.stride_tricks.sliding_window_view(ids, n)
        hits = np.flatnonzero((windows == np.asarray(seps.think_end)).all(axis=1))
        if hits.size:
            think = 1 + int(np.searchsorted(np.asarray(ends), hits[-1] + n - 1, side="right"))
    return bounds, think


@pytest.mark.parametrize("think_end", [(LT, THINK, GT), (THINK,), ()])
def test_segment_batch_equals_per_response_reference(think_end):
    """Thousands of random responses (any separator mix, empty ones, `</think>` pieces split
    across neighbouring responses) cut at once equal the former per-response code."""
    seps = SeparatorIds(double_newline=(DOT2, NL2, BANG), newline=(DOT2, NL, NL2, XNY, BANG),
                        think_end=think_end)  # fmt: skip
    rng = np.random.default_rng(len(think_end))
    vocab = np.arange(0, 14)  # ids past the separator tables too
    responses, prompts = [], []
    for _ in range(3000):
        kind = rng.integers(4)
        weights = np.ones(len(vocab))
        if kind == 0:  # no "\n\n": newline or every-token fallback
            weights[[DOT2, NL2, BANG]] = 0
        if kind == 1:
            weights[[DOT2, NL2, BANG, NL, XNY]] = 0
        weights[[LT, THINK, GT]] *= 4  # frequent (partial) `</think>` matches
        r = rng.choice(vocab, size=int(rng.integers(0, 30)), p=weights / weights.sum())
        responses.append(r.astype(np.int32) if kind == 2 else r.tolist())
        prompts.append(int(rng.integers(0, 9)))
    flat = segment_batch(prompts, responses, seps)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        bounds, think = reference_segment(p, r, seps)
        assert flat[i].bounds == bounds and flat[i].think_end_step == think, (p, r)
        assert segment_steps(p, r, seps) == flat[i]
    # the sampler's form: every response an int32 array (cut without widening the ids)
    assert segment_batch(prompts, [np.asarray(r, np.int32) for r in responses], seps) == flat
    with pytest.raises(ValueError, match="prompt lengths"):
        segment_batch([1], [[A], [B]], seps)
    with pytest.raises(ValueError, match="prompt_len"):
        segment_batch([-1], [[A]], seps)


def test_step_layouts_take_slice_equality_and_sizes():
    rng = np.random.default_rng(11)
    layouts = random_layouts(rng, 200) + [StepLayout.from_ends(3, [], None)]
    flat = StepLayouts.stack(layouts)
    rows = rng.permutation(len(layouts))[:70]
    assert list(flat.take(rows)) == [layouts[i] for i in rows]
    assert list(flat[5:40:3]) == layouts[5:40:3] and len(flat.take([])) == 0
    assert flat == StepLayouts.stack(list(layouts)) and flat != flat.take(rows)
    want = [e - s for lay in layouts for s, e in lay.bounds[1:]]
    np.testing.assert_array_equal(flat.step_sizes, want)


def test_pad_step_ids_of_flat_layouts_equals_each_row():
    """The vectorised padding equals token_step_ids row by row (empty responses, empty prompts
    and a think step included), for flat and per-layout inputs alike."""
    rng = np.random.default_rng(12)
    layouts = random_layouts(rng, 150) + [
        StepLayout.from_ends(0, [2, 5], 1),
        StepLayout.from_ends(4, [], None),
    ]
    width = max(lay.total_len for lay in layouts) + 3
    batch = pad_step_ids(StepLayouts.stack(layouts), total_len=width)
    np.testing.assert_array_equal(
        batch.step_ids, np.stack([token_step_ids(lay, width) for lay in layouts])
    )
    np.testing.assert_array_equal(batch.num_steps, [lay.num_steps for lay in layouts])
    np.testing.assert_array_equal(batch.think_end_step[-2:], [1, -1])
    assert batch.step_ids.dtype == np.int32
    np.testing.assert_array_equal(pad_step_ids(layouts, total_len=width).step_ids, batch.step_ids)
    with pytest.raises(ValueError, match="total_len"):
        pad_step_ids(layouts, total_len=width - 4)
    with pytest.raises(ValueError, match="at least one"):
        pad_step_ids([])


def test_separator_codes_read_zero_outside_the_table():
    seps = SeparatorIds(double_newline=(3,), newline=(3, 5), think_end=())
    for dtype in (np.int8, np.int32, np.int64, np.uint16, np.uint64):
        ids = np.array([0, 3, 5, 6, 100], dtype)
        assert seps.separator_codes(ids).tolist() == [0, 3, 2, 0, 0], dtype
    big = np.array([-1, -(2**40), 2**40, 3], np.int64)
    assert seps.separator_codes(big).tolist() == [0, 0, 0, 3]
    assert seps.separator_codes(np.array([-1, -128, 5], np.int8)).tolist() == [0, 0, 2]
