"""CRD + KD from a WRN40-2 teacher into a WRN16-2 student, RepDistiller's recipe: loss = 1 * CE + 1 * KL at
T = 4 (times T^2) + 0.8 * CRD; CRD settings as in configs/crd_wrn.py.

    python -m jaxkd.train --config configs/crd_kd_wrn.py --workdir workdirs/crd_kd_wrn40_2_wrn16_2 \
        --config.teacher.checkpoint=wrn40_2.pth

Reference: the CRD paper (Table 1) reports 75.64 for CRD+KD wrn_40_2 -> wrn_16_2.
"""

from jaxkd.config import recipes


def get_config():
    # RepDistiller's entry for the pair; the teacher file comes from --config.teacher.checkpoint
    return recipes.repdistiller("wrn_40_2", "wrn_16_2", "crd_kd", teacher_checkpoint="")
