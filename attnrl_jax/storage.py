"""Paths that may be local or on object storage (gs://), for everything a run writes or reads.

A Cloud TPU pod has no shared disk: its hosts share a bucket. Local paths stay `pathlib.Path`
(behaviour unchanged); `gs://bucket/...` becomes an `etils.epath.Path` (fsspec + gcsfs), the
path type orbax itself uses, while orbax/tensorstore write the checkpoint arrays through their
own gcs driver. Other schemes (s3://, http://) are refused in one line (`StorageError`).

Atomic writes differ: a local file is written to a temporary name and renamed; on object
storage a rename is a copy and a delete (not atomic), but a single object's upload is: the
object appears only once complete, so it is written in place. Multi-object writes (a
checkpoint, an export) are made atomic by a commit marker written last: orbax's
commit_success.txt in each checkpoint step (orbax lists only committed steps), export's
`.attnrl-export` (storage.upload_dir). Object storage has no append: `JsonlLog` rewrites the
object (throttled; always at `flush`).

An emulator (tests): STORAGE_EMULATOR_HOST (the google-cloud-storage / gcsfs setting) is also
handed to tensorstore (TENSORSTORE_GCS_HTTP_URL, a test token) when those are unset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("gs",)  # what this module supports; orbax/tensorstore and gcsfs cover these
MANIFEST = ".attnrl-manifest"  # in a local copy: the remote files it was made from
CACHE_ENV = "ATTNRL_CACHE"  # local copies of remote model folders (default ~/.cache/attnrl_jax)

AnyPath = Any  # pathlib.Path or etils.epath.Path: both have /, exists, read_text, iterdir, ...


class StorageError(ValueError):
    """A path on storage this project cannot use (the message names it and why)."""


def _emulator_settings() -> None:
    """Points tensorstore at the emulator STORAGE_EMULATOR_HOST names (before any gcs access);
    gcsfs's bucket-type probe (a gRPC call no emulator answers, 60 s per bucket) is turned off."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


_emulator_settings()


def _no_listing_cache() -> None:
    """gcsfs keeps folder listings forever by default; several processes (and orbax's step
    list after a set-aside) must see each other's writes, so listings are always fresh."""
    try:
        import fsspec.config
    except ImportError:
        return
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False


_no_listing_cache()


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for gs://..., None for a local path."""
    m = URL.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and scheme(path) is not None


def check_supported(path: str | os.PathLike, what: str = "path") -> None:
    """A StorageError when `path` is a URL of a scheme this project cannot write (or gcsfs, the
    gs:// file layer, is not installed)."""
    s = scheme(path)
    if s is None:
        return
    if s not in SCHEMES:
        raise StorageError(
            f"{what}={str(path)!r}: {s}:// is not supported (gs:// is; or mount the storage and "
            "pass the mounted path)"
        )
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise StorageError(
            f"{what}={str(path)!r}: gs:// needs gcsfs (pip install 'attnrl-jax[gcs]')"
        ) from None


def path(p: str | os.PathLike) -> AnyPath:
    """A local pathlib.Path (as given) or, for gs://, an epath.Path."""
    if isinstance(p, Path):
        return p
    if is_remote(p):
        check_supported(p)
        from etils import epath

        return epath.Path(str(p))
    return Path(p)


def absolute(p: str | os.PathLike) -> AnyPath:
    """path(p), made absolute when local (a URL already is)."""
    q = path(p)
    return q if is_remote(q) else Path(os.path.abspath(q))


def same_or_inside(a: AnyPath, b: AnyPath) -> bool:
    """Whether `a` is `b` or inside it, lexically (local paths are made absolute first)."""
    if is_remote(a) != is_remote(b):
        return False
    if is_remote(a):
        sa, sb = str(a).rstrip("/"), str(b).rstrip("/")
        return sa == sb or sa.startswith(sb + "/")
    a, b = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return a == b or b in a.parents


def write_atomic(target: AnyPath, text: str) -> None:
    """`text` into `target`, never half-written: locally a temporary file renamed into place, on
    object storage one upload (an object appears only once complete)."""
    target = path(target)
    if is_remote(target):
        target.write_text(text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(directory: AnyPath) -> None:
    """Creates `directory` and writes and removes a probe file; OSError (one line) otherwise.
    On object storage a missing bucket or a refused write fails here, not inside orbax."""
    directory = path(directory)
    probe = directory / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"{directory} is not writable ({e.strerror or e})") from None
    except Exception as e:  # gcsfs: HTTP errors of a bucket that is missing or not ours
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise OSError(f"{directory} is not writable ({first})") from None


class JsonlLog:
    """Appends lines to a text file: locally an open file flushed per line; on object storage
    (no append) the whole object is rewritten at most every `every_s` seconds and at `flush` /
    `close` (lines not uploaded when a process dies belong to steps after its last checkpoint,
    which a resume redoes and rewrites anyway)."""

    def __init__(self, target: AnyPath, every_s: float = 10.0):
        self.target = path(target)
        self.remote = is_remote(self.target)
        self.every_s = every_s
        if self.remote:
            self._text = self.target.read_text() if self.target.exists() else ""
            self._uploaded = time.monotonic()
            self._dirty = False
        else:
            self._file = open(self.target, "a")  # noqa: SIM115 (closed in close())

    def write(self, line: str) -> None:
        if not self.remote:
            self._file.write(line)
            self._file.flush()
            return
        self._text += line
        self._dirty = True
        if time.monotonic() - self._uploaded >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if not self.remote:
            self._file.flush()
        elif self._dirty:
            self.target.write_text(self._text)
            self._uploaded, self._dirty = time.monotonic(), False

    def close(self) -> None:
        self.flush()
        if not self.remote:
            self._file.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cache_dir(remote: AnyPath) -> Path:
    """The local folder that mirrors a remote folder (ATTNRL_CACHE, default ~/.cache/attnrl_jax,
    then <scheme>/<bucket>/<path>)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "attnrl_jax")
    s = scheme(remote)
    return root / s / str(remote)[len(s) + 3 :].strip("/")


def local_copy(folder: str | os.PathLike) -> Path:
    """A local folder with the files of `folder` (itself when local; a remote one is downloaded,
    not recursively, into cache_dir), for readers that need real files (memory-mapped
    safetensors, tokenizers). A copy whose manifest (names, sizes, times) matches the remote
    files is reused; otherwise it is replaced. Processes of one machine take turns (a lock
    file), so none replaces a copy another is reading."""
    if not is_remote(folder):
        return Path(folder)
    import fcntl

    remote = path(folder)
    local = cache_dir(remote)
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.parent / f".{local.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = sorted((p for p in remote.iterdir() if p.is_file()), key=lambda p: p.name)
        manifest = json.dumps([[p.name, p.stat().length, p.stat().mtime] for p in files])
        if (local / MANIFEST).is_file() and (local / MANIFEST).read_text() == manifest:
            return local
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            for item in files:
                (tmp / item.name).write_bytes(item.read_bytes())
            (tmp / MANIFEST).write_text(manifest)
            if local.exists():
                shutil.rmtree(local)
            os.replace(tmp, local)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return local


def move_dir(source: AnyPath, target: AnyPath) -> None:
    """Renames folder `source` to `target`: locally os.replace (atomic); on object storage each
    object is copied on the server, then the originals deleted (not atomic: cut short, the
    source is still there, whole, and a later move completes)."""
    if not is_remote(source):
        os.replace(source, target)
        return
    from etils.epath import backend

    fs = backend.fsspec_backend.fs(str(source))  # epath's (and orbax's) filesystem
    fs.copy(str(source), str(target), recursive=True)
    fs.rm(str(source), recursive=True)


def upload_dir(local: Path, remote: AnyPath, marker: str) -> None:
    """The files of local folder `local` to remote folder `remote` (its old objects deleted
    first), the file named `marker` last: the commit marker of a complete upload."""
    remote = path(remote)
    if remote.exists():
        for item in remote.iterdir():
            if item.name == marker:  # first: an interrupted replace is no longer complete
                item.unlink()
        for item in remote.iterdir():
            if item.is_dir():
                item.rmtree()
            else:
                item.unlink()
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    for name in [n for n in names if n != marker] + [n for n in names if n == marker]:
        (remote / name).write_bytes((local / name).read_bytes())


def local_arg(value: str) -> Path:
    """argparse type of a path that a command-line tool reads or writes only on a local disk
    (generate, evaluate): a URL is refused in one line (argparse: exit 2), never turned into a
    local folder named "gs:"."""
    if is_remote(value):
        import argparse

        raise argparse.ArgumentTypeError(
            f"{value}: object storage is not supported by this tool; copy it to a local disk "
            "(or mount the bucket) and pass that path"
        )
    return Path(value)
