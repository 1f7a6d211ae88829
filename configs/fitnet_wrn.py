"""FitNets (hint) from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's recipe: loss = CE + 100 * MSE
between ConvReg(student stage-2 output) and the teacher's stage-2 output; the regressor is trained and
weight-decayed with the student from the first step; on RepDistiller's recipe (jaxkd/config/default.py
repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the first step of epochs 151, 181, 211, zero
padding, RepDistiller's mean/std, the last partial batch kept).

    python -m jaxkd.train --config configs/fitnet_wrn.py --workdir workdirs/fitnet_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

Reference: RepDistiller reports 73.58 for FitNet wrn_40_2 -> wrn_16_2 (CIFAR-100 top-1).
"""

from jaxkd.config import recipes


def get_config():
    # RepDistiller's entry for the pair; the teacher file comes from --config.teacher.checkpoint
    return recipes.repdistiller("wrn_40_2", "wrn_16_2", "fitnet", teacher_checkpoint="")
