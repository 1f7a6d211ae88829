"""WRN40-2 trained from scratch with SaliencyMix (the seed's robustness row): the seed's recipe, and on each
batch with probability 0.5 a box from another image of the batch pasted around its saliency peak.

    python -m jaxkd.train --config configs/saliencymix_wrn.py --workdir workdirs/wrn40_2_salmix

Seed README (WRN40-2): CIFAR-100 78.26 (baseline 76.44), CIFAR-100-C 49.06 (baseline 48.12). jaxkd computes the
saliency on the uint8 image as the algorithm intends (the seed's map is computed from float bytes).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "wideresnet40_2"
    config.data.saliencymix = True
    return config
