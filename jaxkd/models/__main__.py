"""`python -m jaxkd.models [--classes N]`: every architecture with its parameter count and GMACs (multiply-accumulates) per 32x32 image (the ImageNet ones also per 224x224 image, 1000 classes)."""

import argparse

from jaxkd.models.summary import size_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxkd.models", description=__doc__.split(":")[1].strip())
    parser.add_argument("--classes", type=int, default=100, help="classifier outputs (default 100, CIFAR-100)")
    print(size_table(parser.parse_args(argv).classes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
