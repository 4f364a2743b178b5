"""A training run that kills itself with SIGKILL at a chosen point of the step-2 save (the
kill -9 cases of test_faults.py): python tests/fault_worker.py WORKDIR POINT.

POINT: "before" (nothing of step 2 written), "during" (orbax's asynchronous write started,
not finished) or "after" (finished, before the trainer goes on).
"""

import os
import signal
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_helpers import run, small_config  # noqa: E402

from attnrl_jax.rl import checkpoint  # noqa: E402


def main(workdir: str, point: str) -> None:
    real_save = checkpoint.Checkpointer.save

    def save(self, step, state, host, pending):
        if step != 2:
            return real_save(self, step, state, host, pending)
        if point == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "during":
            args = checkpoint.ocp.args
            host = dict(host, integrity=checkpoint.integrity.record(state, host, pending))
            items = {"state": args.StandardSave(state), "host": args.JsonSave(host)}
            if pending is not None:
                items["pending"] = args.StandardSave(pending)
            self.manager.save(step, args=args.Composite(**items))  # asynchronous
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(self, step, state, host, pending)
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save
    run(small_config(workdir))


if __name__ == "__main__":
    main(*sys.argv[1:])
