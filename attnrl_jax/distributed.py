"""Multi-host start-up: which processes form the job, a guarded rendezvous, jax.distributed.

Every host of a multi-host job runs the same command (launch/ has the scripts); this module
finds the job's shape and calls `jax.distributed.initialize` before anything else uses JAX.

Where the shape comes from (`resolve_cluster`; config keys `distributed.*` win over the
environment, key by key):
- mode "off": one process, never initialise.
- mode "auto" (default): explicit `coordinator_address` / `num_processes` / `process_id` from
  the config or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; else SLURM
  (SLURM_NTASKS > 1: SLURM_PROCID, the first host of SLURM_STEP_NODELIST or SLURM_JOB_NODELIST);
  else a Cloud TPU VM whose environment lists several workers (TPU_WORKER_HOSTNAMES or
  TPU_PROCESS_ADDRESSES, with TPU_WORKER_ID); else one process.
- mode "tpu": a Cloud TPU pod slice: worker id and worker list from the environment above or,
  when it is not set, from the VM's metadata server (what jax's own detection reads). Single
  slice only (no MEGASCALE multislice).
A job of one process is never initialised: jax.distributed is for two or more.

Why a rendezvous of our own: in jax 0.10.2 a process whose peer never arrives is not given an
exception. The coordination client's error handler LOG(FATAL)s ("Terminating process because
the JAX distributed service detected fatal errors ... DEADLINE_EXCEEDED"), SIGABRT, exit 134,
after `initialization_timeout`, and the public API has no switch for it (the private client's
`missed_heartbeat_callback` fails with std::bad_cast when given a Python function). So before
calling jax, process 0 listens on the coordinator port and every other process checks in over
plain TCP; when all have arrived within the timeout, process 0 closes the port and everyone
calls jax.distributed.initialize (which then only waits for processes known to be alive).
When a peer never arrives, every waiting process raises DistributedError naming the missing
process ids and the address, within the timeout.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

MODES = ("auto", "off", "tpu")
TPU_COORDINATOR_PORT = 8482  # jax's default for Cloud TPU (clusters/cloud_tpu_cluster.py)
SLURM_PORT_BASE = 65535 - 2**12 + 1  # jax's SLURM port rule: base + job id % 4096
_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
_POLL_S = 0.2


class DistributedError(RuntimeError):
    """The multi-host job cannot start: bad settings, or a peer that never arrived."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """One process's view of the job: where process 0 listens, how many, which one we are."""

    coordinator_address: str  # "host:port"
    num_processes: int
    process_id: int
    source: str  # "config", "env", "slurm", "tpu"

    @property
    def host_port(self) -> tuple[str, int]:
        return split_address(self.coordinator_address)


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" ("[v6]:port" too); DistributedError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"coordinator address {address!r} must be host:port with a port in 1..65535"
        )
    return host.strip("[]"), int(port)


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def _explicit(cfg: Mapping[str, Any], env: Mapping[str, str]) -> ClusterSpec | None:
    address = cfg.get("coordinator_address") or env.get("JAX_COORDINATOR_ADDRESS", "")
    count = cfg.get("num_processes") or _int(env.get("JAX_NUM_PROCESSES", 0), "JAX_NUM_PROCESSES")
    pid = cfg.get("process_id", -1)
    if pid is None or pid < 0:
        pid = _int(env.get("JAX_PROCESS_ID", -1), "JAX_PROCESS_ID")
    given = {
        "coordinator_address": bool(address),
        "num_processes": count > 0,
        "process_id": pid >= 0,
    }
    if not any(given.values()):
        return None
    if not all(given.values()):
        missing = [k for k, v in given.items() if not v]
        raise DistributedError(
            f"multi-host settings are incomplete: {', '.join(missing)} not set (config "
            "distributed.<key> or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
        )
    source = "config" if cfg.get("coordinator_address") or cfg.get("num_processes") else "env"
    return _checked(ClusterSpec(address, count, pid, source))


def first_slurm_host(node_list: str) -> str:
    """The first host name of a SLURM node list: "n[003-005,009],m" -> "n003"."""
    match = re.match(r"([^,[]*)(?:\[([^],-]*))?", node_list)
    prefix, first = match.group(1), match.group(2)
    return prefix + (first or "")


def _slurm(env: Mapping[str, str], port: int) -> ClusterSpec | None:
    ntasks = _int(env.get("SLURM_NTASKS", 1), "SLURM_NTASKS")
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if ntasks <= 1 or "SLURM_PROCID" not in env or not nodes:
        return None
    port = port or SLURM_PORT_BASE + _int(env.get("SLURM_JOB_ID", 0), "SLURM_JOB_ID") % 4096
    address = f"{first_slurm_host(nodes)}:{port}"
    return _checked(
        ClusterSpec(address, ntasks, _int(env["SLURM_PROCID"], "SLURM_PROCID"), "slurm")
    )


def _metadata(key: str) -> str:
    request = urllib.request.Request(_METADATA + key, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode().strip()
    except OSError as e:
        raise DistributedError(
            f"distributed.mode=tpu: the TPU VM metadata server did not give {key!r} ({e}); "
            "set TPU_WORKER_ID and TPU_WORKER_HOSTNAMES, or use mode=auto with explicit keys"
        ) from None


def _tpu(env: Mapping[str, str], port: int, use_metadata: bool) -> ClusterSpec | None:
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    worker = env.get("TPU_WORKER_ID")
    if (hosts is None or worker is None) and not use_metadata:
        return None
    if hosts is None or worker is None:
        worker = _metadata("agent-worker-number")
        # Either host names, or name:id:ip triples (jax's cloud_tpu_cluster reads both).
        hosts = ",".join(w.split(":")[-1] for w in _metadata("worker-network-endpoints").split(","))
    names = [h.split(":")[0] for h in hosts.split(",") if h]
    if len(names) <= 1:
        return None
    address = f"{names[0]}:{port or TPU_COORDINATOR_PORT}"
    return _checked(ClusterSpec(address, len(names), _int(worker, "TPU_WORKER_ID"), "tpu"))


def _checked(spec: ClusterSpec) -> ClusterSpec:
    split_address(spec.coordinator_address)
    if spec.num_processes < 1 or not 0 <= spec.process_id < spec.num_processes:
        raise DistributedError(
            f"process_id {spec.process_id} is not in [0, num_processes={spec.num_processes}) "
            f"(from {spec.source})"
        )
    return spec


def resolve_cluster(
    cfg: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> ClusterSpec | None:
    """The job's shape from config `distributed` keys and the environment; None = one process.

    cfg keys: mode, coordinator_address, num_processes, process_id, port (0 = the cluster's
    default port for SLURM / TPU).
    """
    env = os.environ if env is None else env
    mode = cfg.get("mode", "auto")
    if mode not in MODES:
        raise DistributedError(f"distributed.mode={mode!r}; known: {list(MODES)}")
    if mode == "off":
        return None
    port = cfg.get("port", 0) or 0
    spec = _explicit(cfg, env)
    if spec is None and mode == "auto":
        spec = _slurm(env, port) or _tpu(env, port, use_metadata=False)
    elif spec is None:
        spec = _tpu(env, port, use_metadata=True)
    return spec if spec is not None and spec.num_processes > 1 else None


# ----- rendezvous -----


def _missing_message(spec: ClusterSpec, missing: list[int], timeout_s: float) -> str:
    return (
        f"multi-host start-up failed: after {timeout_s:g} s, process(es) {missing} of "
        f"{spec.num_processes} never reached the coordinator at {spec.coordinator_address}. "
        "Start the same command on every host (launch/), with the same coordinator address "
        "and num_processes, and check that the port is open between hosts"
    )


def _serve(spec: ClusterSpec, timeout_s: float) -> None:
    """Process 0: accept one check-in per other process, then answer all at once."""
    deadline = time.monotonic() + timeout_s
    _, port = spec.host_port
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    except (OSError, ValueError):
        server = socket.create_server(("", port))
    peers: dict[int, socket.socket] = {}
    problems: list[str] = []
    with server:
        while len(peers) < spec.num_processes - 1 and time.monotonic() < deadline:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                conn, _ = server.accept()
            except TimeoutError:
                break
            conn.settimeout(max(deadline - time.monotonic(), 1.0))
            try:
                pid, count = (int(x) for x in conn.makefile().readline().split())
            except (OSError, ValueError):
                conn.close()
                continue
            if count != spec.num_processes or not 0 < pid < count or pid in peers:
                problems.append(f"process {pid} says num_processes={count}")
                conn.close()
                continue
            peers[pid] = conn
        missing = [i for i in range(1, spec.num_processes) if i not in peers]
        reply = b"go\n" if not missing and not problems else f"missing {missing}\n".encode()
        for conn in peers.values():
            with conn:
                try:
                    conn.sendall(reply)
                    conn.recv(1)  # the peer closes first, so this port has no TIME_WAIT
                except OSError:
                    pass
    if problems:
        raise DistributedError(
            f"multi-host start-up failed at {spec.coordinator_address}: {'; '.join(problems)} "
            f"(this process has num_processes={spec.num_processes}, process ids must be unique)"
        )
    if missing:
        raise DistributedError(_missing_message(spec, missing, timeout_s))


def _check_in(spec: ClusterSpec, timeout_s: float) -> None:
    """Process i > 0: connect to process 0 (retrying until the deadline) and wait for go."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = socket.create_connection(spec.host_port, timeout=5)
            break
        except OSError as e:
            if time.monotonic() + _POLL_S >= deadline:
                raise DistributedError(
                    f"multi-host start-up failed: process {spec.process_id} could not reach "
                    f"the coordinator (process 0) at {spec.coordinator_address} within "
                    f"{timeout_s:g} s ({e}). Is process 0 running, with this address?"
                ) from None
            time.sleep(_POLL_S)
    with conn:
        # Process 0 answers at its own deadline at the latest: wait a little past ours.
        conn.settimeout(max(deadline - time.monotonic(), 0.0) + 10.0)
        try:
            conn.sendall(f"{spec.process_id} {spec.num_processes}\n".encode())
            reply = conn.makefile().readline().strip()
        except OSError:
            reply = ""
    if reply == "go":
        return
    if reply.startswith("missing"):
        missing = [int(x) for x in reply[len("missing") :].strip(" []").split(",") if x.strip()]
        raise DistributedError(_missing_message(spec, missing, timeout_s))
    raise DistributedError(
        f"multi-host start-up failed: process {spec.process_id} reached the coordinator at "
        f"{spec.coordinator_address} but got no start signal within {timeout_s:g} s (another "
        "process with the same id, or a different num_processes?)"
    )


def rendezvous(spec: ClusterSpec, timeout_s: float) -> None:
    """Blocks until all spec.num_processes processes have checked in; DistributedError naming
    the missing ones otherwise, within about timeout_s."""
    if spec.process_id == 0:
        _serve(spec, timeout_s)
    else:
        _check_in(spec, timeout_s)


def initialize(cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """Starts jax.distributed for the job described by cfg / env (see the module docstring).

    Call before any other JAX use. Returns the ClusterSpec, or None for a single process (then
    nothing is initialised). cfg["initialization_timeout_s"] bounds the whole start-up.
    """
    spec = resolve_cluster(cfg, env)
    if spec is None:
        return None
    timeout_s = float(cfg.get("initialization_timeout_s", 300))
    rendezvous(spec, timeout_s)
    import jax

    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes,
        process_id=spec.process_id,
        initialization_timeout=max(int(timeout_s), 1),
        # The shape is settled; jax's own detection would, under SLURM, also narrow each
        # process to one local GPU (SLURM_LOCALID). JAX_LOCAL_DEVICE_IDS still applies.
        cluster_detection_method="deactivate",
    )
    return spec


def is_primary() -> bool:
    """Whether this is process 0: the one that writes metrics, logs and shared files."""
    import jax

    return jax.process_index() == 0


def all_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process of the job: one all-gather when there are several
    (every process must call it at the same point of its run), nothing for one process."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))
