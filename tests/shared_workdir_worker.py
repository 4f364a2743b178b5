"""One of the 2 processes of tests/test_shared_workdir.py, which share one workdir (gs:// or
local): python tests/shared_workdir_worker.py WORKDIR COORDINATOR PROCESS_ID STEPS [FAULT]

Trains multihost_worker.config(WORKDIR) to STEPS (3 checkpoints kept) as jax.distributed process
PROCESS_ID of 2, resuming from the workdir's newest intact checkpoint, and prints
"process P restored step N" (N = 0: none). FAULT: a step number N: step N's arrays cannot be
read on process 1 only (its host state can), as if one of its files could not be read on that
host; "metrics@N": process 0's write of step N's metrics line fails (a full disk). A
DamagedCheckpoint or MetricsWriteError ends the process as the train CLI does: "error: <one
line>" on stderr, exit 1.
"""

import errno
import json
import sys

from multihost_worker import config, parity_reward


def main(workdir: str, coordinator: str, process_id: str, steps: str, fault: str = "") -> None:
    from attnrl_jax.distributed import initialize

    spec = {
        "coordinator_address": coordinator,
        "num_processes": 2,
        "process_id": int(process_id),
        "initialization_timeout_s": 60,
    }
    initialize(spec)
    from attnrl_jax import storage
    from attnrl_jax.rl.checkpoint import Checkpointer
    from attnrl_jax.rl.integrity import DamagedCheckpoint
    from attnrl_jax.rl.metrics_log import MetricsWriteError
    from attnrl_jax.train import build_trainer

    if fault.isdigit() and process_id == "1":
        real = Checkpointer._read

        def read(self, step, what, args):  # the host state reads, the arrays do not
            if step == int(fault) and what == "arrays":
                raise DamagedCheckpoint(step, self.directory, "cannot read its arrays (injected)")
            return real(self, step, what, args)

        Checkpointer._read = read
    if fault.startswith("metrics@") and process_id == "0":
        real_write, full_at = storage.JsonlLog.write, int(fault.removeprefix("metrics@"))

        def write(self, line):
            if json.loads(line)["step"] == full_at:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            real_write(self, line)

        storage.JsonlLog.write = write
    c = config(workdir)
    c.total_steps = int(steps)
    c.checkpoint.update(every=1, keep=3)
    try:
        trainer = build_trainer(c, reward_fn=parity_reward)
    except DamagedCheckpoint as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        print(f"process {process_id} restored step {trainer.step}", flush=True)
        trainer.run()
    except MetricsWriteError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
