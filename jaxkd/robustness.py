"""`python -m jaxkd.robustness`: The robustness table of several models (docs/evaluate.md); the code is jaxkd/tools/robustness.py."""

import sys

from jaxkd.tools.robustness import main

if __name__ == "__main__":
    sys.exit(main())
