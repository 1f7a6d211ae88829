"""AT (attention transfer, p = 2) from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's recipe:
loss = CE + 1000 * sum over the 3 stage outputs of the mean squared difference of normalized attention maps;
on RepDistiller's recipe (jaxkd/config/default.py repdistiller_recipe: the seed's hyperparameters, lr x0.1 from the
first step of epochs 151, 181, 211, zero padding, RepDistiller's mean/std, the last partial batch kept).

    python -m jaxkd.train --config configs/at_wrn.py --workdir workdirs/at_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

Reference: RepDistiller reports 74.08 for AT wrn_40_2 -> wrn_16_2 (CIFAR-100 top-1).
"""

from configs import default
from jaxkd.methods import config_section


def get_config():
    config = default.repdistiller_recipe(default.get_config())
    config.model = "wideresnet16_2"
    config.method = "at"
    config.teacher.arch = "wideresnet40_2"
    config.loss.gamma = 1.0
    config.loss.alpha = 0.0
    config.loss.beta = 1000.0
    config.loss.kd_temperature = 4.0
    config.at = config_section("at")  # RepDistiller's p = 2 (jaxkd/methods/at.py)
    return config
