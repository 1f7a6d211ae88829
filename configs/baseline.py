"""Train any model of the family from scratch with the seed's recipe (the seed's "Baseline" rows).

    python -m jaxkd.train --config configs/baseline.py --workdir workdirs/baseline_wrn40_2 \
        --config.model=wideresnet40_2

Expected (seed README, CIFAR-100 test top-1 after 240 epochs): WRN40-2 76.44, WRN40-1 71.91, WRN28-4 79.03,
WRN16-4 77.35, WRN16-2 74.03, WRN16-1 67.85, resnet56 72.55, resnet20 69.51, resnet8 61.11.
"""

from configs import default


def get_config():
    return default.get_config()
