"""`python -m jaxkd.report`: The report of training runs, beside published numbers (docs/reproduce.md); the code is jaxkd/tools/report.py."""

import sys

from jaxkd.tools.report import main

if __name__ == "__main__":
    sys.exit(main())
