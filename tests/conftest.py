"""pytest's hooks and the fixtures shared across test files: the session's compilation cache, a seeded
generator per test, one PyTorch thread, a GCS server, and the xdist scheduling of shared module fixtures.
Helpers live in tests/helpers/ by concern; test files import them from there, never from one another."""

import atexit
import os
import shutil
import tempfile
# pytest reports an exception raised in a __del__ ("unraisable") through a hook that imports tracemalloc on first
# use. When the garbage collector runs such a __del__ while TFDS imports its modules under etils' lazy-import
# context, that first import runs inside the context and fails ("'LazyModule' object is not callable"), and the
# warning becomes a test failure (tests/test_data_streaming.py's TFDS test, once in CI). Imported here first, the
# hook only looks it up.
import tracemalloc  # noqa: F401
import zlib

# One persistent XLA compilation cache for the session, set before JAX is imported so that the subprocesses the
# tests start share it too: the suite compiles many identical programs (a straight run and its resumed twin, the
# seeds of one table cell, the same student's evaluation step in every method's learning run), now each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxkd-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs too: there are many
# LAPACK custom calls (KDSVD's SVDs) run inside XLA's own threads: OpenBLAS's threads on top oversubscribe the
# two cores (a KDSVD term and its gradient at batch 16 took 0.42 s with them, 0.05-0.09 s without)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the cache settings above)
import pytest
import torch

from tests.helpers.gcs_server import GcsServer, apply_environment


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: random data that is the same on every run, so that a failure
    reproduces and a tolerance is not met by luck."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one intra-op thread for a module's tests: their tensors are tiny, and a thread pool on a few
    shared cores waits on the other processes more than it computes (a ShuffleV1 forward: 3 s on 2 threads
    under load, 0.05 s on one). Restored afterwards (the setting is process-wide)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def gcs():
    """A GCS server on localhost (tests/helpers/gcs_server.py) with the bucket `runs`, started once per session; the
    clients of this process and of the subprocesses it starts are pointed at it."""
    server = GcsServer(buckets=("runs",))
    apply_environment(server.environment())
    yield server
    server.stop()


# Fixtures shared by a module's tests that are cheap enough to build on each worker that needs them.
CHEAP_SHARED_FIXTURES = {"one_torch_thread"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on 2 pytest-xdist workers (`--dist loadgroup`). A module whose tests share a
    module-scoped fixture (a training run they all read) becomes one group, kept on one worker so that the
    fixture is built once; every other test is scheduled on its own. xdist hands out the groups first, the
    largest first, then the single tests in collection order: the single tests marked `slow` are put first among
    them, so that none is left running alone at the suite's end while the other worker has nothing to do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the order otherwise kept
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        shared = [name for name, defs in (definitions.name2fixturedefs.items() if definitions else ())
                  if name not in CHEAP_SHARED_FIXTURES and defs[-1].scope == "module"]
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stops an xdist run whose groups were not applied (pytest 9.2 with pytest-xdist 3.8 drops them without a
    word), rather than let both workers build every module's shared runs."""
    if node.config.getoption("dist") == "loadgroup" and ids and not any("@" in nodeid for nodeid in ids):
        pytest.exit("pytest-xdist did not apply the groups of tests/conftest.py: use the pytest versions that "
                    "pyproject.toml's [test] allows", returncode=4)
