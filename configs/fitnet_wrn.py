"""FitNets (hint) from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's recipe: loss = CE + 100 * MSE
between ConvReg(student stage-2 output) and the teacher's stage-2 output; the regressor is trained and
weight-decayed with the student from the first step; on RepDistiller's recipe (jaxkd/config/default.py
repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the first step of epochs 151, 181, 211, zero
padding, RepDistiller's mean/std, the last partial batch kept).

    python -m jaxkd.train --config configs/fitnet_wrn.py --workdir workdirs/fitnet_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

Reference: RepDistiller reports 73.58 for FitNet wrn_40_2 -> wrn_16_2 (CIFAR-100 top-1).
"""

from configs import default
from jaxkd.methods import config_section


def get_config():
    config = default.repdistiller_recipe(default.get_config())
    config.model = "wideresnet16_2"
    config.method = "fitnet"
    config.teacher.arch = "wideresnet40_2"
    config.loss.gamma = 1.0
    config.loss.alpha = 0.0
    config.loss.beta = 100.0
    config.loss.kd_temperature = 4.0
    config.fitnet = config_section("fitnet")  # hint_layer 1: the 2nd stage output (RepDistiller's --hint_layer 2)
    return config
