"""`python -m jaxkd.evaluate`: Evaluate model checkpoints on CIFAR-100 and CIFAR-100-C (docs/evaluate.md); the code is jaxkd/tools/evaluate.py."""

import sys

from jaxkd.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
