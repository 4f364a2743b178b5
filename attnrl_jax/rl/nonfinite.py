"""The non-finite guard of a training step (train.on_nonfinite; a mixin of
rl/trainer.Trainer): "stop" raises NonFiniteStep, "skip" restores the state from before the
update and counts the skip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.rl import integrity
from attnrl_jax.rl.checkpoint import say


class NonFiniteStep(RuntimeError):
    """A step whose loss, gradient norm or new params/optimizer state are not finite."""


class NonFiniteGuard:
    """Reads the Trainer's params, opt_state, step, run config and nonfinite_skips."""

    def _backup_for_skip(self):
        """A copy of (params, opt_state) to fall back on when a step may be skipped: the update
        donates the old buffers. Costs one more copy of the state in device memory."""
        if self.run_config.train.on_nonfinite != "skip":
            return None
        return jax.tree.map(jnp.copy, (self.params, self.opt_state))

    def _guard_nonfinite(self, update_metrics: dict, backup) -> dict:
        """The update's metrics when loss, gradient norm and the new state are finite. Otherwise
        the step is not applied: "stop" raises NonFiniteStep naming the step (nothing of it is
        saved), "skip" puts the backup back, counts the skip and blanks the loss metrics."""
        values = {k: v for k, v in update_metrics.items() if isinstance(v, float)}
        bad = sorted(k for k, v in values.items() if not np.isfinite(v))
        if not bad and not integrity.all_finite(self._state()):
            bad = ["params/optimizer state"]
        if not bad:
            return {**update_metrics, "nonfinite_skips": self.nonfinite_skips}
        what = ", ".join(f"{k}={values[k]}" if k in values else k for k in bad)
        if backup is None:
            raise NonFiniteStep(
                f"step {self.step + 1}: non-finite {what}; the update was not applied and not "
                f"saved ({self.restore_point()}); lower optim.learning_rate, check the rewards, "
                "or set train.on_nonfinite=skip"
            )
        self.params, self.opt_state = backup
        self.nonfinite_skips += 1
        say(f"step {self.step + 1}: non-finite {what}; the update was skipped")
        blank = dict.fromkeys(values)
        return {**update_metrics, **blank, "nonfinite_skips": self.nonfinite_skips}
