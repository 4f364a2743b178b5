"""A local Google Cloud Storage emulator for the gs:// tests (gcp-storage-emulator, the `test`
extra): started in a subprocess on a free port with one bucket, in memory, and stopped after.

`emulator()` yields the bucket's gs:// root with os.environ pointing every client at it
(STORAGE_EMULATOR_HOST for gcsfs and google-cloud-storage; tensorstore's own settings, which
attnrl_jax.storage derives from it only at import, are set here too), or skips the test with the
reason when the emulator or gcsfs is missing or does not start.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "attnrl-test"
START_TIMEOUT_S = 60  # a cold Python start on a loaded machine


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


@contextlib.contextmanager
def emulator(cache_dir):
    pytest.importorskip("gcsfs", reason="gs:// needs gcsfs (pip install -e '.[test]')")
    pytest.importorskip("gcp_storage_emulator", reason="the GCS emulator is not installed")
    url = f"http://127.0.0.1:{_free_port()}"
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", port, "--in-memory", "--default-bucket", BUCKET, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    settings = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "ATTNRL_CACHE": str(cache_dir),
    }
    saved = {k: os.environ.get(k) for k in settings}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"the GCS emulator did not start: {proc.stderr.read()[-500:]}")
            time.sleep(0.2)
        os.environ.update(settings)
        yield f"gs://{BUCKET}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
