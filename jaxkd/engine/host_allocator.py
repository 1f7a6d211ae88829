"""glibc's allocator set up to reuse freed memory, for training on CPU: XLA:CPU allocates each step's large
temporary buffer afresh, which glibc serves with a new `mmap` every step (millions of page faults a minute).
Keeping large blocks on the heap in one arena (what `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...` do, here by `mallopt` before JAX starts its threads) reuses the same pages; the
process then keeps its peak memory. CPU runs only; left alone when a `MALLOC_` variable is set, with
`JAXKD_HOST_ALLOCATOR=0`, and without `mallopt`. Measurements: benchmarks/README.md."""

import ctypes
import importlib.util
import os

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# the largest trim threshold mallopt takes (an int): free memory at the heap's top is returned only above it
NEVER_TRIM = 2**31 - 1
# whether this process set it (the bench records it)
applied = False


def runs_on_cpu() -> bool:
    """Whether JAX will compute on the CPU, decided before JAX starts: `JAX_PLATFORMS`, else whether a GPU or
    TPU plugin is installed (`jax_plugins`, `libtpu`)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def keep_freed_memory() -> bool:
    """Sets glibc's allocator to reuse freed blocks (above) for a run on the CPU; returns whether it did."""
    if os.environ.get("JAXKD_HOST_ALLOCATOR", "1") == "0" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    if not runs_on_cpu():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global applied
    applied = all([mallopt(option, value) == 1
                   for option, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))])
    return applied
