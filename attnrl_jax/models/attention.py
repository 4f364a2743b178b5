"""The one attention kernel: chunked, masked, grouped-query softmax (rotary code: rope.py).

The decoder never calls a kernel directly: it calls an `Attend` function, so the sampler can
plug in a KV cache and the scoring pass can accumulate attention statistics, each threading its
own state through the layer scan (see `decoder.forward_hidden`). Every `Attend` of the project is
`attention` with one of the mask builders below:

    causal_mask(segment_ids)       training, scoring, prefill: causal within segments
    tree_mask(nodes, ancestors)    tree-packed rows: a key is visible when its node is on the
                                   query's root path (DFS interval containment)
    cache_mask(positions)          decode: cache slot <= the row's position
    hide_keys(mask, starts, ends)  any of them with each row's key range [start, end) hidden
                                   (benchmarks/mechanism.py: the paper's Fig. 3 disruption)

A mask builder returns `mask(q_start, q_size, k_start, k_size) -> bool [B, q_size, k_size]`, so
only one chunk's mask ever exists (never T x T). Statistics of the attention probabilities (FCI)
come from an `Observer` passed to the kernel, which threads the observer's own state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

# attend(layer_index, q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,D], state) -> (out [B,T,Hq,D], state)
Attend = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

# mask(q_start, q_size, k_start, k_size) -> bool [B, q_size, k_size]; starts may be traced
Mask = Callable[[Any, int, Any, int], jax.Array]

MASK_VALUE = -1e30  # finite, so a fully masked (padding) row gives a uniform row, never NaN


def attention_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """Scaled scores [B, Hkv, G, Tq, Tk] in float32 for q [B,Tq,Hq,D], k [B,Tk,Hkv,D]."""
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    return scores * (d**-0.5)


def attention_output(probs: jax.Array, v: jax.Array) -> jax.Array:
    """Weighted values [B, Tq, Hq, D] from probs [B, Hkv, G, Tq, Tk] and v [B, Tk, Hkv, D]."""
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v)
    b, tq, hkv, g, d = out.shape
    return out.reshape(b, tq, hkv * g, d)


def causal_segment_mask(q_segments: jax.Array, k_segments: jax.Array, q_index, k_index):
    """[B, 1, 1, Tq, Tk] bool: same non-zero segment and key not after query (by index).

    Index order rather than position ids decides causality, so left padding, right padding
    and packed sequences (several segments in one row) all mask correctly.
    """
    same = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
    causal = k_index[None, None, :] <= q_index[None, :, None]
    return (same & causal)[:, None, None]


# ---- mask builders ----


def causal_mask(segment_ids: jax.Array) -> Mask:
    """Causal within segments (segment_ids [B, T] int, 0 = padding), by index order."""

    def mask(q_start, q_size, k_start, k_size):
        seg_q = jax.lax.dynamic_slice_in_dim(segment_ids, q_start, q_size, axis=1)
        seg_k = jax.lax.dynamic_slice_in_dim(segment_ids, k_start, k_size, axis=1)
        q_index = q_start + jnp.arange(q_size)
        k_index = k_start + jnp.arange(k_size)
        return causal_segment_mask(seg_q, seg_k, q_index, k_index)[:, 0, 0]

    return mask


def tree_mask(nodes: jax.Array, ancestors: jax.Array) -> Mask:
    """Tree-packed rows: query i sees key j iff j <= i and node[j] lies on node[i]'s root path.

    nodes: [B, T] int32 node of each token, numbered in DFS pre-order (-1 = padding);
    ancestors: [B, K, K] bool, ancestors[b, n, a] = a is an ancestor-or-self of n. With DFS
    numbering node a's subtree is the interval [a, a + size[a]) (size = its column count), so
    node a is on n's root path iff a <= n < a + size[a]: two integers per token, compared per
    chunk.
    """
    sizes = jnp.sum(ancestors, axis=1, dtype=jnp.int32)  # [B, K] subtree sizes
    ends = nodes + jnp.take_along_axis(sizes, jnp.maximum(nodes, 0), axis=1)  # [B, T]

    def mask(q_start, q_size, k_start, k_size):
        node_q = jax.lax.dynamic_slice_in_dim(nodes, q_start, q_size, axis=1)[:, :, None]
        node_k = jax.lax.dynamic_slice_in_dim(nodes, k_start, k_size, axis=1)[:, None, :]
        end_k = jax.lax.dynamic_slice_in_dim(ends, k_start, k_size, axis=1)[:, None, :]
        causal = k_start + jnp.arange(k_size)[None, :] <= q_start + jnp.arange(q_size)[:, None]
        return (node_k >= 0) & (node_k <= node_q) & (node_q < end_k) & causal[None]

    return mask


def cache_mask(positions: jax.Array) -> Mask:
    """Decode over a KV cache: row r's queries see slots [0, positions[r]] (positions [R])."""

    def mask(q_start, q_size, k_start, k_size):
        del q_start
        visible = k_start + jnp.arange(k_size)[None, :] <= positions[:, None]  # [R, k_size]
        return jnp.broadcast_to(visible[:, None, :], (positions.shape[0], q_size, k_size))

    return mask


def hide_keys(mask: Mask, starts: jax.Array, ends: jax.Array) -> Mask:
    """`mask` with keys starts[b] <= index < ends[b] hidden from every query of row b (starts,
    ends [B] int32; start == end hides nothing). Meant for queries that all come after the
    range, e.g. decoding after a step: the paper's Fig. 3 cuts later tokens' attention to it."""

    def hidden_mask(q_start, q_size, k_start, k_size):
        k_index = k_start + jnp.arange(k_size)[None, :]
        inside = (k_index >= starts[:, None]) & (k_index < ends[:, None])  # [B, k_size]
        return mask(q_start, q_size, k_start, k_size) & ~inside[:, None, :]

    return hidden_mask


# ---- observers ----


class Observer(Protocol):
    """Receives one layer's attention probabilities, chunk by chunk, and keeps its own state.

    For each query chunk (start `q`): acc = start(state, q); then per key chunk (start `k`)
    acc = add(acc, probs, rescale, q, k); then state = finish(state, acc, total, q).

    Keys read whole (one exact softmax): probs [B, Hkv, G, Cq, S] float32 are the attention
    probabilities; rescale and total are None.
    Keys read in chunks (running softmax): probs [B, Hkv, G, Cq, Ck] are exp(score - m) for the
    running maximum m; rescale [B, Hkv, G, Cq] = exp(m_old - m_new) multiplies what `acc` holds
    from earlier key chunks (as the kernel rescales its own sums); total [B, Hkv, G, Cq] is the
    softmax denominator, so the attention probabilities are (rescaled probs) / total.
    """

    def start(self, state: Any, q_start: Any) -> Any: ...

    def add(
        self, acc: Any, probs: jax.Array, rescale: jax.Array | None, q_start, k_start
    ) -> Any: ...

    def finish(self, state: Any, acc: Any, total: jax.Array | None, q_start: Any) -> Any: ...


# ---- the kernel ----


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: Mask,
    *,
    query_chunk: int | None = None,
    key_chunk: int | None = None,
    key_limit: jax.Array | None = None,
    cache_layout: bool = False,
    observer: Observer | None = None,
    observed: Any = None,
    remat: bool = False,
) -> tuple[jax.Array, Any]:
    """Masked softmax attention out [B, T, Hq, D] (in q's dtype) and the observer's new state.

    q [B, T, Hq, D]; k, v [B, S, Hkv, D], or with `cache_layout` the decode cache's own layout
    k [B, Hkv, D, S], v [B, Hkv, S, D] (read without a transpose). With key_chunk, k and v may
    also be readers of that shape (`shape`, `dtype`, `read(start, size)` -> the chunk; see
    _key_slice).

    Queries run in chunks of `query_chunk` (None: all at once), so scores live as [B, H, chunk,
    keys]. key_chunk None: each query chunk sees all keys in one exact softmax. key_chunk n (it
    divides S): keys are read n at a time with a running (online) softmax, and with `key_limit`
    (a traced count of keys any query may see) the chunks past it are not read at all.
    observer / observed: see `Observer`; observed is returned unchanged without an observer.
    remat: recompute each query chunk in the backward pass rather than keep its probabilities,
    so under differentiation attention memory stays [B, H, chunk, keys], linear in T.
    """
    b, t, hq, d = q.shape
    hkv = k.shape[1] if cache_layout else k.shape[2]
    s = k.shape[3] if cache_layout else k.shape[1]
    cq = _divisor_chunk(t, query_chunk, "sequence length", "query_chunk")
    qg = q.reshape(b, t, hkv, hq // hkv, d)

    if key_chunk is None:

        def one_query_chunk(observed, q_start):
            qc = _query_chunk(qg, q_start, cq)
            scores = _scores(qc, k, cache_layout)
            scores = jnp.where(mask(q_start, cq, 0, s)[:, None, None], scores, MASK_VALUE)
            probs = jax.nn.softmax(scores, axis=-1)  # [B, Hkv, G, Cq, S]
            if observer is not None:
                acc = observer.add(observer.start(observed, q_start), probs, None, q_start, 0)
                observed = observer.finish(observed, acc, None, q_start)
            return observed, _values(probs, v, cache_layout)
    else:
        ck = _divisor_chunk(s, key_chunk, "key length", "key_chunk")

        def one_query_chunk(observed, q_start):
            qc = _query_chunk(qg, q_start, cq)
            acc = None if observer is None else observer.start(observed, q_start)
            out, total, acc = _online(
                qc, k, v, mask, q_start, ck, key_limit, cache_layout, observer, acc
            )
            if observer is not None:
                observed = observer.finish(observed, acc, total, q_start)
            return observed, out.astype(q.dtype)

    if cq == t:
        observed, out = one_query_chunk(observed, 0)
        return out.reshape(b, t, hq, d), observed
    if remat:
        one_query_chunk = jax.checkpoint(one_query_chunk)
    observed, outs = jax.lax.scan(one_query_chunk, observed, jnp.arange(0, t, cq))
    return jnp.moveaxis(outs, 0, 1).reshape(b, t, hq, d), observed


def _query_chunk(qg: jax.Array, q_start, size: int) -> jax.Array:
    """Queries [B, size, Hkv, G, D] from q_start (all of them, unsliced, when size is T)."""
    if size == qg.shape[1]:
        return qg
    return jax.lax.dynamic_slice_in_dim(qg, q_start, size, axis=1)


def _online(qc, k, v, mask, q_start, ck, key_limit, cache_layout, observer, obs_acc):
    """Running softmax of one query chunk qc [B, Cq, Hkv, G, D] over key chunks of ck keys:
    float32 out [B, Cq, Hkv, G, D], the softmax denominators [B, Hkv, G, Cq] and the observer's
    accumulator.

    Works on query rows [B, Hkv, G * Cq, D] (row g * Cq + q), so one decode query per row
    (Cq = 1) needs no transpose anywhere: measured, 5-D einsums with a unit query axis made XLA
    add copies and transposes to the decode step.
    """
    b, cq, hkv, g, d = qc.shape
    s = k.shape[3] if cache_layout else k.shape[1]
    if cq == 1:
        rows = qc.reshape(b, hkv, g, d)
    else:
        rows = jnp.moveaxis(qc, 1, 3).reshape(b, hkv, g * cq, d)
    score_spec = "bhrd,bhdk->bhrk" if cache_layout else "bhrd,bkhd->bhrk"
    value_spec = "bhrk,bhkd->bhrd" if cache_layout else "bhrk,bkhd->bhrd"

    def row_mask(k_start):
        m = mask(q_start, cq, k_start, ck)  # [B, Cq, Ck]
        if cq == 1:
            return m[:, None]
        return jnp.broadcast_to(m[:, None, None], (b, 1, g, cq, ck)).reshape(b, 1, g * cq, ck)

    def step(j, carry):
        peak, total, acc, obs = carry
        k_start = j * ck
        kc = _key_slice(k, k_start, ck, axis=3 if cache_layout else 1)
        vc = _key_slice(v, k_start, ck, axis=2 if cache_layout else 1)
        scores = jnp.einsum(score_spec, rows, kc, preferred_element_type=jnp.float32)
        scores = jnp.where(row_mask(k_start), scores * (d**-0.5), MASK_VALUE)
        new_peak = jnp.maximum(peak, jnp.max(scores, axis=-1))
        probs = jnp.exp(scores - new_peak[..., None])
        shrink = jnp.exp(peak - new_peak)
        new_total = total * shrink + jnp.sum(probs, axis=-1)
        update = jnp.einsum(
            value_spec, probs.astype(v.dtype), vc, preferred_element_type=jnp.float32
        )
        acc = acc * shrink[..., None] + update
        if observer is not None:
            chunk_probs = probs.reshape(b, hkv, g, cq, ck)
            obs = observer.add(obs, chunk_probs, shrink.reshape(b, hkv, g, cq), q_start, k_start)
        return new_peak, new_total, acc, obs

    stats = (b, hkv, g * cq)
    init = (
        jnp.full(stats, MASK_VALUE, jnp.float32),
        jnp.zeros(stats, jnp.float32),
        jnp.zeros((*stats, d), jnp.float32),
        obs_acc,
    )
    if ck == s:
        _, total, acc, obs_acc = step(0, init)
    else:
        needed = s // ck if key_limit is None else (key_limit - 1) // ck + 1
        _, total, acc, obs_acc = jax.lax.fori_loop(0, needed, step, init)
    out = acc / total[..., None]  # [B, Hkv, G * Cq, D]
    if cq == 1:
        out = out.reshape(b, 1, hkv, g, d)
    else:
        out = jnp.moveaxis(out.reshape(b, hkv, g, cq, d), 3, 1)
    return out, total.reshape(b, hkv, g, cq), obs_acc


def _key_slice(x, start, size: int, axis: int) -> jax.Array:
    """Keys or values [start, start + size) along the key axis. x is an array, or a reader
    with the array's `shape` and `read(start, size)` (a paged cache gathers only that chunk's
    pages, so chunks past key_limit are never gathered)."""
    if hasattr(x, "read"):
        return x.read(start, size)
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _scores(qc: jax.Array, k: jax.Array, cache_layout: bool) -> jax.Array:
    """Scaled float32 scores [B, Hkv, G, Cq, S] of qc [B, Cq, Hkv, G, D] (keys read whole)."""
    spec = "bqhgd,bhdk->bhgqk" if cache_layout else "bqhgd,bkhd->bhgqk"
    scores = jnp.einsum(spec, qc, k, preferred_element_type=jnp.float32)
    return scores * (qc.shape[-1] ** -0.5)


def _values(probs: jax.Array, v: jax.Array, cache_layout: bool) -> jax.Array:
    """probs [B, Hkv, G, Cq, S] times values -> [B, Cq, Hkv, G, D] in v's dtype."""
    spec = "bhgqk,bhkd->bqhgd" if cache_layout else "bhgqk,bkhd->bqhgd"
    return jnp.einsum(spec, probs.astype(v.dtype), v)


def _divisor_chunk(n: int, chunk: int | None, what: str, name: str) -> int:
    size = n if chunk is None or chunk >= n else chunk
    if n % size:
        raise ValueError(f"{what} {n} is not a multiple of {name} {size}")
    return size


def causal_attend(segment_ids: jax.Array, query_chunk: int | None = None) -> Attend:
    """The plain full-sequence attention: causal within segments (segment 0 = padding).

    segment_ids: [B, T] int. With `query_chunk`, queries are processed in chunks so the score
    tensor is [B, H, chunk, T] rather than [B, H, T, T] (same result: each row's softmax is exact).
    """
    mask = causal_mask(segment_ids)

    def attend(layer, q, k, v, state):
        del layer
        out, _ = attention(q, k, v, mask, query_chunk=query_chunk)
        return out, state

    return attend


def tree_attend(nodes: jax.Array, ancestors: jax.Array, query_chunk: int | None = None) -> Attend:
    """Attention over tree-packed rows (see `tree_mask`) for training: per query chunk, each
    recomputed in the backward pass, so neither the mask nor the probabilities are T x T."""
    mask = tree_mask(nodes, ancestors)

    def attend(layer, q, k, v, state):
        del layer
        out, _ = attention(q, k, v, mask, query_chunk=query_chunk, remat=True)
        return out, state

    return attend
