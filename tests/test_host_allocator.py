"""`jaxkd.engine.host_allocator`: after `keep_freed_memory()`, a large block freed and allocated again reuses the same
pages (few page faults), where glibc's defaults map fresh ones each time; a `MALLOC_` variable or
JAXKD_HOST_ALLOCATOR=0 leaves the allocator alone. Each case runs in a fresh process: the setting is
process-wide."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK_MB = 128
REPEATS = 5
PAGES_TOUCHED = REPEATS * BLOCK_MB * 256  # 4 KiB pages
HUGE_PAGES_TOUCHED = REPEATS * BLOCK_MB // 2  # 2 MiB pages, where the kernel backs fresh mappings with them

SCRIPT = f"""
import resource
import numpy as np
from jaxkd.engine.host_allocator import keep_freed_memory

applied = keep_freed_memory()
np.ones({BLOCK_MB} << 17).sum()  # the block once, so that the heap has grown to it
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({REPEATS}):
    np.ones({BLOCK_MB} << 17).sum()  # allocated, every page written, freed
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(**variables) -> tuple[bool, int]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MALLOC_") and name != "JAXKD_HOST_ALLOCATOR"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, "PYTHONPATH": str(REPO), **variables},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_mapped_afresh():
    applied, reused = page_faults()
    assert applied and reused < 0.02 * PAGES_TOUCHED, reused
    for variables in ({"JAXKD_HOST_ALLOCATOR": "0"}, {"MALLOC_ARENA_MAX": "4"}):
        applied, faults = page_faults(**variables)
        assert not applied and faults >= HUGE_PAGES_TOUCHED and faults > 10 * reused, (variables, faults, reused)
