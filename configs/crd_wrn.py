"""CRD from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's CRD recipe: loss = 1 * CE + 0.8 * CRD
(K = 16384 other-class negatives, T = 0.07, memory momentum 0.5, 128-d embeddings), on RepDistiller's recipe
(jaxkd/config/default.py repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the first step of epochs 151,
181, 211, zero padding, RepDistiller's mean/std, the last partial batch kept: each epoch refreshes every bank
row).

    python -m jaxkd.train --config configs/crd_wrn.py --workdir workdirs/crd_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

The teacher may be the seed's released `wrn40_2.pth`, a RepDistiller teacher file, a `convert import`
directory or a jaxkd training workdir. Reference: the CRD paper (Table 1) reports 75.48 for CRD
wrn_40_2 -> wrn_16_2 (student alone 73.26, KD 74.92).
"""

from configs import default
from jaxkd.methods import config_section


def get_config():
    config = default.repdistiller_recipe(default.get_config())
    config.model = "wideresnet16_2"
    config.method = "crd"
    config.teacher.arch = "wideresnet40_2"
    config.loss.gamma = 1.0
    config.loss.alpha = 0.0
    config.loss.beta = 0.8
    # RepDistiller's nce_k 16384, nce_t 0.07, nce_m 0.5, feat_dim 128, and chunk_elements 2^19, (anchor, dataset
    # row) pairs per chunk of the sampling and scoring: a memory bound, not part of the recipe (results change
    # only by rounding); a large accelerator can take the whole batch (64 x 50000). jaxkd/methods/crd.py.
    config.crd = config_section("crd")
    return config
