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

from jaxkd.config import recipes


def get_config():
    # RepDistiller's entry for the pair; the teacher file comes from --config.teacher.checkpoint
    return recipes.repdistiller("wrn_40_2", "wrn_16_2", "crd", teacher_checkpoint="")
