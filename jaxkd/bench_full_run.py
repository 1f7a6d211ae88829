"""`python -m jaxkd.bench_full_run`: A whole training run timed (benchmarks/README.md); the code is jaxkd/tools/bench_full_run.py."""

import sys

from jaxkd.tools.bench_full_run import main

if __name__ == "__main__":
    sys.exit(main())
