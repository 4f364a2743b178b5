"""The GCS emulator process of tests/gcs_emulator.py: python tests/gcs_emulator_server.py PORT
BUCKET. gcp-storage-emulator, with what tensorstore relies on and it lacks added here, as real
Cloud Storage does it: generation preconditions (ifGenerationMatch on uploads, downloads and
deletes: 412 when the object's generation differs, "0" meaning absent; ifGenerationNotMatch on
downloads: 304) and the x-goog-generation header of a download. Without preconditions,
tensorstore's optimistic manifest updates (OCDBT, several writers) fail or overwrite each other.
Stops when its parent process is gone.
"""

import os
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _with_preconditions(handler, name_of, download: bool = False):
    def wrapped(request, response, storage, *args, **kwargs):
        name = name_of(request)
        if name is not None:
            bucket = request.params["bucket_name"]
            current = _generation(storage, bucket, name)
            match = request.query.get("ifGenerationMatch")
            if match and match[0] != current:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            not_match = request.query.get("ifGenerationNotMatch")
            if download and not_match and not_match[0] == current:
                response.status = HTTPStatus.NOT_MODIFIED
                response["x-goog-generation"] = current
                return None
            if download and current != "0":
                response["x-goog-generation"] = current
                response["x-goog-metageneration"] = "1"
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


objects.insert = _with_preconditions(objects.insert, lambda r: r.query.get("name", [None])[0])
objects.download = _with_preconditions(
    objects.download, lambda r: r.params["object_id"], download=True
)
objects.delete = _with_preconditions(objects.delete, lambda r: r.params["object_id"])

from gcp_storage_emulator.server import create_server  # noqa: E402 (after the patches)


def main(port: str, bucket: str) -> None:
    server = create_server("127.0.0.1", int(port), in_memory=True, default_bucket=bucket)
    server.start()
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
