"""AT (attention transfer, p = 2) from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's recipe:
loss = CE + 1000 * sum over the 3 stage outputs of the mean squared difference of normalized attention maps;
on RepDistiller's recipe (jaxkd/config/default.py repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the
first step of epochs 151, 181, 211, zero padding, RepDistiller's mean/std, the last partial batch kept).

    python -m jaxkd.train --config configs/at_wrn.py --workdir workdirs/at_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

Reference: RepDistiller reports 74.08 for AT wrn_40_2 -> wrn_16_2 (CIFAR-100 top-1).
"""

from jaxkd.config import recipes


def get_config():
    # RepDistiller's entry for the pair; the teacher file comes from --config.teacher.checkpoint
    return recipes.repdistiller("wrn_40_2", "wrn_16_2", "at", teacher_checkpoint="")
