"""A local Google Cloud Storage emulator for the gs:// tests (gcp-storage-emulator, the `test`
extra): one per pytest process, started at first use in a subprocess on a free port with one
bucket, in memory, and stopped when the process exits (or is killed). One for all: gcsfs caches its
filesystem and tensorstore reads its endpoint once, so the endpoint cannot change mid-session.

The server is tests/gcs_emulator_server.py (the emulator with generation preconditions added).
`emulator(cache_dir)` yields the bucket's gs:// root, with os.environ pointing every client at
the emulator (STORAGE_EMULATOR_HOST for gcsfs; tensorstore's own settings, which
attnrl_jax.storage derives from it only at import, are set here too) and ATTNRL_CACHE at
cache_dir; or skips the test with the reason when the emulator or gcsfs is missing or does not
start. Tests keep to their own prefixes in the bucket.
"""

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BUCKET = "attnrl-test"
START_TIMEOUT_S = 60  # a cold Python start on a loaded machine
_server: dict = {}  # "url", "process" once started
SERVER = Path(__file__).with_name("gcs_emulator_server.py")  # the patched emulator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start() -> str:
    """The emulator's URL, started on first call; pytest.skip when it cannot start."""
    if "url" in _server:
        return _server["url"]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), BUCKET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ready(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.skip(f"the GCS emulator did not start within {START_TIMEOUT_S} s")
        time.sleep(0.2)
    atexit.register(_stop, proc)
    os.environ.update(
        STORAGE_EMULATOR_HOST=url,
        TENSORSTORE_GCS_HTTP_URL=url,
        GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    _server.update(url=url, process=proc)
    return url


@contextlib.contextmanager
def emulator(cache_dir):
    # find_spec, not import: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT (set by _start) on
    # import
    for module in ("gcsfs", "gcp_storage_emulator"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    _start()
    saved = os.environ.get("ATTNRL_CACHE")
    os.environ["ATTNRL_CACHE"] = str(cache_dir)
    try:
        yield f"gs://{BUCKET}"
    finally:
        if saved is None:
            os.environ.pop("ATTNRL_CACHE", None)
        else:
            os.environ["ATTNRL_CACHE"] = saved
