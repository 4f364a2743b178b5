"""benchmarks/mechanism's next-token accuracy by role (what a chain warm start has learned): the
batched forward predicts as one forward per example does, and the scoring counts each role's
tokens of the gold solutions."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnrl_jax.data.chain_task import chain_tokenizer, held_out_chains
from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.models import CausalLM
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mechanism  # noqa: E402

TOKENIZER = chain_tokenizer()
HELD = held_out_chains(3, 16)
PROMPTS = encode_prompts(TOKENIZER, [p.problem for p, _, _ in HELD])
SOLUTIONS = [s for _, s, _ in HELD]
ENCODED = [TOKENIZER(s, add_special_tokens=False, return_offsets_mapping=True) for s in SOLUTIONS]
ROWS = [list(p) + e["input_ids"] for p, e in zip(PROMPTS, ENCODED, strict=True)]


def test_batched_predictions_match_one_forward_per_row():
    cfg = ModelConfig(
        vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_layers=1,
        num_heads=2, num_kv_heads=1, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    assert len({len(r) for r in ROWS}) > 1  # rows of different lengths: padding is exercised
    batched = mechanism.greedy_predictions(model, ROWS)
    for row, guess in zip(ROWS, batched, strict=True):
        logits = forward(model.params(), cfg, jnp.asarray([row], jnp.int32))[0]
        np.testing.assert_array_equal(guess, np.asarray(jnp.argmax(logits, -1)))


def test_scores_count_every_role_token_and_only_right_guesses():
    perfect = [np.asarray(row[1:] + [0]) for row in ROWS]  # each position guesses the next token
    scores = mechanism.score_roles(perfect, PROMPTS, SOLUTIONS, ENCODED)
    # one name, one result, 3 definition tokens per step; copied values only where a step uses
    # earlier quantities (3 tokens: value, operator, value)
    steps = sum(len(c.steps) for _, _, c in HELD)
    with_refs = sum(bool(c.refs(k)) for _, _, c in HELD for k in range(len(c.steps)))
    assert scores == {
        "name": (1.0, steps),
        "definition": (1.0, 3 * steps),
        "copied value": (1.0, 3 * with_refs),
        "result": (1.0, steps),
    }
    # wrong on every result token, right elsewhere
    wrong = [g.copy() for g in perfect]
    for guess, prompt, solution, enc in zip(wrong, PROMPTS, SOLUTIONS, ENCODED, strict=True):
        roles = mechanism.token_roles(solution)
        for t, (_, end) in enumerate(enc["offset_mapping"]):
            if roles[end - 1] == "result":
                guess[len(prompt) + t - 1] = -1
    scores = mechanism.score_roles(wrong, PROMPTS, SOLUTIONS, ENCODED)
    assert scores["result"] == (0.0, steps) and scores["definition"] == (1.0, 3 * steps)


def test_value_span_is_the_memo_value_of_the_step():
    solution = "a=6+1;a7\n\nc=a-b=7-3;c4\n\nThe answer is \\boxed{4}."
    response = TOKENIZER(solution, add_special_tokens=False)["input_ids"]
    texts = [TOKENIZER.decode([t]) for t in response]
    sep = [i + 1 for i, t in enumerate(texts) if t == "\n\n"]  # steps end after their separator
    prompt_len = 5
    bounds = [(0, prompt_len), (prompt_len, prompt_len + sep[0])]
    bounds.append((prompt_len + sep[0], prompt_len + sep[1]))
    for k, value in ((1, "7"), (2, "4")):
        a, b = mechanism.value_span(TOKENIZER, response, bounds, prompt_len, k)
        assert TOKENIZER.decode(response[a - prompt_len : b - prompt_len]) == value
    # a step without a memo hides nothing
    plain = TOKENIZER("a=6+1\n\n", add_special_tokens=False)["input_ids"]
    assert mechanism.value_span(TOKENIZER, plain, [(0, 0), (0, len(plain))], 0, 1) == (0, 0)
