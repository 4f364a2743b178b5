"""FCI computed by the sampler while decoding (SamplingOptions.fci) equals the scoring forward's.

One sampler call with the option (plus one without, for the unchanged tokens) and one scoring
call on a tiny random Qwen2 (3 layers, GQA). The separator set is large (about a sixth of the
vocabulary), so sampled responses have many "\\n\\n" steps; short budgets give responses that
need the "\\n" and every-token fallbacks; a long one overflows max_steps.
"""

import jax
import numpy as np
import pytest
from hf_reference import make_hf_checkpoint

from attnrl_jax.models import load_pretrained
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplerFci, SamplingOptions, sample
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.steps import SeparatorIds, segment_steps

VOCAB = 101
THINK = 60
SEPS = SeparatorIds(
    double_newline=tuple(range(0, 17)), newline=tuple(range(0, 34)), think_end=(THINK,)
)
CONFIG = SamplerConfig(
    Buckets(rows=(16, 32), lengths=(16, 32, 64, 128)), query_chunk=16, attention_chunk=16
)
MAX_STEPS = 12  # two of the sampled responses need more step slots


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_hf_checkpoint(
        tmp_path_factory.mktemp("sampler_fci") / "model",
        seed=5,
        vocab_size=VOCAB,
        num_hidden_layers=3,
        max_position_embeddings=256,
    )
    return load_pretrained(path)


def _requests():
    rng = np.random.default_rng(0)
    prompt = [rng.integers(34, VOCAB, n).tolist() for n in (3, 9, 14, 20, 6)]
    return [
        Request(prompt[0], n=3, max_new_tokens=40),  # fan-out
        Request(prompt[1], n=2, max_new_tokens=56),
        Request(prompt[2], n=4, max_new_tokens=3),  # short: some without "\n\n" / "\n"
        Request(prompt[3], n=1, max_new_tokens=100),  # long: more steps than max_steps - 1
        Request(prompt[4], n=3, max_new_tokens=2),
        Request(prompt[1], prefix_ids=prompt[4], n=2, max_new_tokens=20),  # a continuation
    ]


@pytest.fixture(scope="module")
def runs(model):
    requests = _requests()
    base = dict(max_new_tokens=100, temperature=1.0, seed=11)
    option = SamplerFci(SEPS, FciConfig(), max_steps=MAX_STEPS)
    params = model.params()
    with_fci = sample(params, model.config, requests, SamplingOptions(**base, fci=option), CONFIG)
    without = sample(params, model.config, requests, SamplingOptions(**base), CONFIG)
    return requests, with_fci, without


def test_sampled_tokens_and_log_probs_unchanged_by_the_option(runs):
    _, with_fci, without = runs
    for a, b in zip(with_fci, without, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-6)
        assert b.fci is None


def _kind(request, sample):
    if request.prefix_ids:
        return "continuation"
    ids = sample.token_ids
    if not np.isin(ids, SEPS.double_newline).any():
        return "newline" if np.isin(ids, SEPS.newline).any() else "every token"
    layout = segment_steps(len(request.prompt_ids), ids, SEPS)
    return "overflow" if layout.num_steps + 1 > MAX_STEPS else "exact"


def test_sampler_fci_equals_the_scoring_forward(model, runs):
    requests, samples, _ = runs
    kinds = [_kind(requests[s.request], s) for s in samples]
    # The seed gives every case at least once (a changed sampler would show up here).
    assert {k: kinds.count(k) for k in set(kinds)}.keys() == {
        "continuation",
        "newline",
        "every token",
        "overflow",
        "exact",
    }, kinds
    fresh = [s for s, k in zip(samples, kinds, strict=True) if k != "continuation"]
    scored = score_sequences(
        model.params(),
        model.config,
        ScoringConfig(query_chunk=16, logit_chunk=16),
        [requests[s.request].prompt_ids for s in fresh],
        [s.token_ids for s in fresh],
        SEPS,
        batch_size=16,
    )
    exact = 0
    for s, ref in zip(fresh, scored, strict=True):
        if _kind(requests[s.request], s) != "exact":
            assert s.fci is None  # left to the scoring forward
            continue
        exact += 1
        assert s.fci.shape == ref.fci.shape
        np.testing.assert_allclose(s.fci, ref.fci, rtol=1e-4, atol=1e-7)
    assert exact >= 5
    assert any(ref.layout.think_end_step is not None for ref in scored)
    assert max(np.count_nonzero(ref.fci) for ref in scored) >= 3
    for s, k in zip(samples, kinds, strict=True):
        if k == "continuation":
            assert s.fci is None


def test_pooling_aggregation_delta_and_layer_variants(model):
    """Sum pooling, mean aggregation, delta 3 and a layer subset: one more compile each side."""
    requests = _requests()[:2]
    fci = FciConfig(pooling="sum", delta=3, aggregation="mean", layers=(0, 2))
    option = SamplerFci(SEPS, fci, max_steps=16)
    options = SamplingOptions(max_new_tokens=64, seed=3, fci=option)
    samples = sample(model.params(), model.config, requests, options, CONFIG)
    scored = score_sequences(
        model.params(),
        model.config,
        ScoringConfig(fci=fci, query_chunk=16, logit_chunk=16),
        [requests[s.request].prompt_ids for s in samples],
        [s.token_ids for s in samples],
        SEPS,
        batch_size=16,
    )
    assert all(s.fci is not None for s in samples)
    assert max(np.count_nonzero(ref.fci) for ref in scored) >= 3
    for s, ref in zip(samples, scored, strict=True):
        np.testing.assert_allclose(s.fci, ref.fci, rtol=1e-4, atol=1e-7)


def test_bad_options_raise(model):
    with pytest.raises(ValueError, match="max_steps must be >= 2"):
        SamplerFci(SEPS, max_steps=1)
    with pytest.raises(TypeError, match="SeparatorIds"):
        SamplerFci((7,))
    option = SamplerFci(SEPS, FciConfig(layers=(5,)))
    with pytest.raises(ValueError, match=r"FCI layers \[5\] out of range"):
        sample(
            model.params(), model.config, [Request([40])], SamplingOptions(4, fci=option), CONFIG
        )


def test_rollout_fci_source_sampler_equals_scoring(model):
    """rollout.score_generation with FCI from the sampler (scoring forward only for the rows it
    cannot score, or for entropies) gives the FCI and branch points of fci_source="scoring"."""
    from attnrl_jax.data.pipeline import Prompt
    from attnrl_jax.data.records import Problem
    from attnrl_jax.rl import ads
    from attnrl_jax.rl import rollout as ro
    from attnrl_jax.rl import step_plan as sp
    from attnrl_jax.sampling.engine import NativeEngine
    from attnrl_jax.scoring.selection import SelectionConfig

    rng = np.random.default_rng(1)
    prompts = [
        Prompt(Problem(f"p{j}", ("1",), "t"), tuple(rng.integers(34, VOCAB, 3 + 4 * j).tolist()))
        for j in range(4)
    ]
    scoring = ScoringConfig(fci=FciConfig(delta=1), query_chunk=16, logit_chunk=16)
    base = dict(group_size=4, max_new_tokens=6, scoring=scoring, score_batch_size=16)
    atb = SelectionConfig(num_points=2, min_token_distance=0)
    gens = {}
    for source, method in [("scoring", "atb"), ("sampler", "atb"), ("sampler", "entropy")]:
        rc = ro.RolloutConfig(
            **base, fci_source=source, selection=SelectionConfig(method, 0.2, 2, 0)
        )
        requests = ro.initial_requests(prompts, rc.group_size)
        fci = rc.sampler_fci(SEPS)
        assert (fci is None) == (source == "scoring")
        engine = NativeEngine(model.config, model.params(), CONFIG)
        out = ro.sample_all(engine, requests, rc, 7, fci)
        missing = sum(s.fci is None for group in out for s in group) if fci else 0
        gen = ro.score_generation(model.params(), model.config, rc, prompts, out, SEPS, 0)
        gens[source, method] = gen, missing
    ref, _ = gens["scoring", "atb"]
    for (source, method), (gen, missing) in gens.items():
        # the sampler's FCI stays on the device, padded: [B' >= B, W >= S_max + 1]
        assert isinstance(gen.fci, jax.Array) == (source == "sampler")
        host, width = gen.fci_host(), ref.fci.shape[1]
        assert host.shape[0] == len(gen.responses) and not host[:, width:].any()
        np.testing.assert_allclose(host[:, :width], ref.fci, rtol=1e-4, atol=1e-7)
        for a, b in zip(gen.logprobs, ref.logprobs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
        assert gen.layouts == ref.layouts
        assert (gen.entropies is None) == (source == "sampler" and method == "atb")
        if source == "sampler":
            assert 0 < missing < len(gen.responses)  # both paths ran
    assert sum(np.count_nonzero(f) for f in ref.fci) >= 5
    rewards = np.tile([1.0, 0.0], 8)
    rc = ro.RolloutConfig(**base, selection=atb, ads=ads.ADSConfig(expansion="uniform"))
    plans = [
        sp.plan_branches(g, rewards, ads.AttentionFilterState(), np.random.default_rng(0), rc)
        for g in (ref, gens["sampler", "atb"][0])
    ]
    assert plans[0].branch_points == plans[1].branch_points
    assert any(plans[0].branch_points)
