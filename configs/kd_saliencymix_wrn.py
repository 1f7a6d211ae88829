"""KD from WRN40-2 into WRN16-2 with SaliencyMix: RepDistiller's KD recipe (0.1 CE + 0.9 KL at T = 4, its lr
timing and data pipeline: configs/kd_wrn.py) on SaliencyMix batches; the teacher sees the same mixed images as the student
(consistent teaching), and the CE term is SaliencyMix's lam * CE(y) + (1 - lam) * CE(y_partner).

    python -m jaxkd.train --config configs/kd_saliencymix_wrn.py --workdir workdirs/kd_salmix_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth
"""

from configs import kd_wrn


def get_config():
    config = kd_wrn.get_config()
    config.data.saliencymix = True
    return config
