"""`python -m jaxkd.bench`: Step-time benchmark of jaxkd against PyTorch (benchmarks/README.md); the code is jaxkd/tools/bench.py."""

import sys

from jaxkd.engine import host_allocator
from jaxkd.tools.bench import main

if __name__ == "__main__":
    host_allocator.keep_freed_memory()  # before JAX starts its threads
    sys.exit(main())
