"""`python -m jaxkd.runs`: List and run the training runs of a table (docs/reproduce.md); the code is jaxkd/tools/runs.py."""

import sys

from jaxkd.tools.runs import main

if __name__ == "__main__":
    sys.exit(main())
