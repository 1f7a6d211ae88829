"""KD (Hinton) from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's KD recipe:
loss = 0.1 * CE + 0.9 * KL at T = 4 (times T^2), on RepDistiller's recipe (jaxkd/config/default.py
repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the first step of epochs 151, 181, 211, zero
padding, RepDistiller's mean/std, the last partial batch kept).

    python -m jaxkd.train --config configs/kd_wrn.py --workdir workdirs/kd_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

The teacher may be the seed's released `wrn40_2.pth`, a RepDistiller teacher file, a `convert import`
directory or a jaxkd training workdir. Reference: RepDistiller reports 74.92 for KD wrn_40_2 -> wrn_16_2.
"""

from jaxkd.config import recipes


def get_config():
    # RepDistiller's entry for the pair; the teacher file comes from --config.teacher.checkpoint
    return recipes.repdistiller("wrn_40_2", "wrn_16_2", "kd", teacher_checkpoint="")
