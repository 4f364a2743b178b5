"""A training run that kills itself with SIGKILL at a chosen point of the step-2 save (the
kill -9 cases of test_faults.py): python tests/fault_worker.py WORKDIR POINT.

POINT: "before" (nothing of step 2 written), "during" (every file of step 2 written, its commit
not made: orbax's rename of the temporary directory, or on object storage its commit marker)
or "after" (finished, before the trainer goes on). Each point is reached by a hook, not a delay,
so the outcome does not depend on how loaded the machine is.
"""

import os
import signal
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_helpers import run, small_config  # noqa: E402

from attnrl_jax.rl import checkpoint  # noqa: E402


def kill_before_commit(step: int) -> None:
    """SIGKILL when orbax is about to commit checkpoint `step` (both commit kinds)."""
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        real = cls.finalize

        async def finalize(self, *args, _real=real, **kwargs):
            if self._final_path.name == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            return await _real(self, *args, **kwargs)

        cls.finalize = finalize


def main(workdir: str, point: str) -> None:
    real_save = checkpoint.Checkpointer.save

    def save(self, step, state, host, pending):
        if step != 2:
            return real_save(self, step, state, host, pending)
        if point == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "during":
            kill_before_commit(step)
        real_save(self, step, state, host, pending)
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save
    run(small_config(workdir))


if __name__ == "__main__":
    main(*sys.argv[1:])
