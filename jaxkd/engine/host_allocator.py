"""glibc's allocator set up to reuse freed memory, for training on CPU.

XLA:CPU allocates each step's temporary buffer (185 MB for KD wrn40_2 -> wrn16_2 at batch 64) on the heap and
frees it at the step's end. glibc serves a block that large with a fresh `mmap` and returns it with `munmap`, so
every step touches new pages: millions of page faults per minute, the kernel zeroing and charging each one
(benchmarks/README.md: 10-19% of the cycles). With large blocks kept on the heap (no mmap, no trimming) and one
arena shared by all threads, the step reuses the same pages; this is what the environment variables
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` do, set here with `mallopt` by the commands
themselves, before JAX starts its threads (a thread takes its arena at its first allocation).

Measured on a 2-core AMD EPYC (benchmarks/README.md): KD wrn40_2 -> wrn16_2 at batch 64 from ~91 to ~100
img/s, page faults of a bench process 2.9 M -> 0.41 M, the same with the variables or with this.

The cost: freed memory stays with the process (its peak, not its current, use), which a training process
reaches again at the next step anyway. Only for runs on the CPU (`JAX_PLATFORMS` starting with `cpu`, or no
accelerator plugin installed): an accelerator's temporary buffers live on the device. Left alone when any
`MALLOC_` variable is set (the user's own choice), with `JAXKD_HOST_ALLOCATOR=0`, and on a C library without
`mallopt` (musl, macOS).
"""

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
