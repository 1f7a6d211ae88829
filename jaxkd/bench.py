"""`python -m jaxkd.bench`: step-time benchmark of jaxkd against PyTorch (jaxkd/tools/bench.py), or with `--input`
the streaming input path's against torchvision's DataLoader (jaxkd/tools/bench_input.py); benchmarks/README.md."""

import sys

from jaxkd.engine import host_allocator
from jaxkd.errors import run_command
from jaxkd.tools import bench, bench_input


def main(argv=None) -> int:
    """The input path's part for a command line with `--input`, else the step benchmark."""
    argv = sys.argv if argv is None else argv
    if any(arg == "--input" or arg.startswith("--input=") for arg in argv[1:]):
        return run_command(bench_input.input_command, argv)
    return bench.main(argv)


if __name__ == "__main__":
    host_allocator.keep_freed_memory()  # before JAX starts its threads
    sys.exit(main())
