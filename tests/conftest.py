"""Test-wide set-up: 8 forced CPU devices (for mesh tests) before JAX initialises."""

import gc
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Object-storage tests load gcsfs / aiohttp and leave their threads and event loop in the
# pytest process; they run last so nothing else runs beside those (a full run once ended in a
# segfault inside an XLA compile of a later test, cause not found).
_LAST = ("test_gcs.py", "test_shared_workdir.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in _LAST)  # stable: the rest keep their order


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops every module's compiled programs when it ends. Each XLA:CPU executable keeps
    memory mappings; a whole-suite process reached the kernel's limit (vm.max_map_count 65530)
    and segfaulted inside a later compile."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()
