"""The GRPO/PPO-style policy loss (ALGORITHM.md section 8) as a jitted function of per-token arrays.

Per token: the clipped surrogate with asymmetric clip [1 - clip_low, 1 + clip_high] and, for
negative advantages, the dual clip at -A * c (verl's compute_policy_loss, which the released code
trains with), plus kl_weight * k3(new, ref) minus entropy_weight * entropy.

Importance correction (decoupled PPO, as AReaL and verl's truncated importance sampling): with
proximal log-probs (the trainer's own forward at the step's first params, rl/update.py) the ratio
is pi_new / pi_prox, clipped as above, and each token's surrogate is multiplied by the truncated
behaviour weight min(pi_prox / pi_behaviour, tis_cap), a constant: it corrects for tokens the
sampler drew with other numerics (bf16 kernels) or older params (off-policy). Without proximal
log-probs (tis_cap 0) the behaviour log-probs are the old policy, as before.

Aggregation is token-mean, returned unnormalised as (weighted sum, weight sum) together with
weighted metric sums: summing those over micro-batches, accumulation steps and hosts and dividing
once gives the exact mean over the whole mini-batch (verl instead averages per micro-batch and
rescales by row counts, which is only approximately the token mean). Weights are floats: 1 for real
tokens, 0 for padding, and the path count for tree-packed tokens, so a packed batch gives the same
sums as its per-path form.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class LossConfig:
    """Loss settings (hashable: passed to jit as a static argument).

    clip_low / clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high]. dual_clip: c, the
    bound -A * c on the loss of negative-advantage tokens (None disables it). kl_weight: weight of
    the k3 KL to the reference policy (0: no reference log-probs needed). entropy_weight: bonus on
    the given token entropies. log_ratio_clamp: |log ratio| and |ref - new| are clamped to this
    before exponentiating, as verl does for stability. tis_cap: C of the truncated behaviour
    weight min(pi_prox / pi_behaviour, C); 0 turns the correction off (no proximal forward runs
    and the behaviour log-probs are the old policy).
    """

    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    kl_weight: float = 0.001
    entropy_weight: float = 0.0
    log_ratio_clamp: float = 20.0
    tis_cap: float = 2.0

    def __post_init__(self):
        if not 0.0 <= self.clip_low < 1.0 or self.clip_high < 0.0:
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        if self.kl_weight < 0.0 or self.log_ratio_clamp <= 0.0:
            raise ValueError("kl_weight must be >= 0 and log_ratio_clamp > 0")
        if self.tis_cap != 0 and self.tis_cap < 1.0:
            raise ValueError(f"tis_cap must be 0 (off) or >= 1, got {self.tis_cap}")

    @property
    def proximal(self) -> bool:
        """Whether the update recomputes proximal log-probs (the importance correction is on)."""
        return self.tis_cap > 0


class LossTerms(NamedTuple):
    """Weighted sums; divide `total` and each metric by the summed `denominator` once at the end.

    metrics: "pg_loss", "clip_frac" (ratio clipped), "approx_kl" (old - new), plus
    "clip_frac_lower" (dual clip active) with a dual clip, "kl" (k3) with reference log-probs and
    "entropy" with entropies.
    """

    total: jax.Array  # float32[]
    denominator: jax.Array  # float32[]
    metrics: dict[str, jax.Array]  # float32[] each


def metric_names(config: LossConfig, with_entropy: bool = True) -> tuple[str, ...]:
    """The LossTerms.metrics keys policy_loss returns for this config (reference log-probs given
    iff kl_weight > 0, entropies iff with_entropy)."""
    names = ["pg_loss", "clip_frac", "approx_kl"]
    if config.dual_clip is not None:
        names.append("clip_frac_lower")
    if config.kl_weight > 0:
        names.append("kl")
    if with_entropy:
        names.append("entropy")
    return tuple(names)


def k3_kl(new_logp: jax.Array, ref_logp: jax.Array, clamp: float = 20.0) -> jax.Array:
    """Low-variance KL estimate exp(ref - new) - (ref - new) - 1, clamped as in verl; shape kept."""
    d = jnp.clip(ref_logp - new_logp, -clamp, clamp)
    return jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)


@partial(jax.jit, static_argnames="config")
def policy_loss(
    new_logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    weights: jax.Array,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
    prox_logp: jax.Array | None = None,
    *,
    config: LossConfig = LossConfig(),
) -> LossTerms:
    """Weighted token sums of the policy loss over a [B, T] batch.

    new_logp: float[B, T], log-probs of the sampled tokens under the policy being trained (the only
    input gradients are meant for, with `entropy`). old_logp: float[B, T], behaviour log-probs.
    prox_logp: float[B, T] proximal log-probs (the importance correction, with config.tis_cap >
    0), or None: the ratio is then against old_logp with no behaviour weight.
    advantages: float[B, T]. weights: float[B, T], token weights (0 = ignored; values there may be
    garbage, even inf or nan). ref_logp: float[B, T] or None (allowed only with kl_weight == 0).
    entropy: float[B, T] or None (allowed only with entropy_weight == 0).
    """
    if ref_logp is None and config.kl_weight > 0:
        raise ValueError("kl_weight > 0 needs reference log-probs (ref_logp)")
    if entropy is None and config.entropy_weight != 0:
        raise ValueError("entropy_weight != 0 needs token entropies (entropy)")
    w = weights.astype(jnp.float32)
    live = w != 0

    def clean(x: jax.Array) -> jax.Array:
        return jnp.where(live, x.astype(jnp.float32), 0.0)

    def wsum(x: jax.Array) -> jax.Array:
        return jnp.sum(w * x)

    if prox_logp is not None and not config.proximal:
        raise ValueError("prox_logp given with tis_cap 0 (the correction is off)")
    new, old, adv = clean(new_logp), clean(old_logp), clean(advantages)
    tis = None
    if prox_logp is not None:
        prox = clean(prox_logp)
        behaviour = jnp.clip(prox - old, -config.log_ratio_clamp, config.log_ratio_clamp)
        tis = jax.lax.stop_gradient(jnp.minimum(jnp.exp(behaviour), config.tis_cap))
        old = prox
    log_ratio = jnp.clip(new - old, -config.log_ratio_clamp, config.log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    pg = jnp.maximum(pg1, pg2)
    metrics = {"clip_frac": wsum(pg2 > pg1), "approx_kl": wsum(-log_ratio)}
    if config.dual_clip is not None:
        pg3 = -adv * config.dual_clip
        metrics["clip_frac_lower"] = wsum((pg > pg3) & (adv < 0))
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    if tis is not None:
        pg = tis * pg
    metrics["pg_loss"] = wsum(pg)
    loss = pg
    if ref_logp is not None:
        kl = k3_kl(new, clean(ref_logp), config.log_ratio_clamp)
        metrics["kl"] = wsum(kl)
        loss = loss + config.kl_weight * kl
    if entropy is not None:
        ent = clean(entropy)
        metrics["entropy"] = wsum(ent)
        loss = loss - config.entropy_weight * ent
    return LossTerms(wsum(loss), jnp.sum(w), metrics)
