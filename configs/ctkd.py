"""CTKD's CIFAR-100 recipe (curriculum temperature, Li et al. 2023): `--config configs/ctkd.py:T,S,M`.

    python -m jaxkd.train --config configs/ctkd.py:wrn_40_2,wrn_16_2,ctkd --workdir workdirs/ctkd_w402_w162

T and S are model names in RepDistiller's spelling (CTKD's `models/__init__.py` model_dict is RepDistiller's) or
any jaxkd name. M is one of
- `ctkd`: zhengli97/CTKD `scripts/run_cifar_distill.sh`, KD at the learned temperature: `-r 0.1 -a 0.9 -b 0
  --kd_T 4 --have_mlp 1 --mlp_name global --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10` and
  `train_student.py`'s `--t_start 1 --t_end 20`: CE weight 0.1 (loss.gamma), the learned-temperature KD weighted
  0.9 (loss.beta: CTKD's term), the engine's fixed-temperature KD term off (loss.alpha 0);
- `ctkd_dkd`: the same script's DKD line, `--distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2`: DKD at the
  learned temperature (`ctkd.base = "dkd"`), CE weight 1, term weight 1.
The training recipe is CTKD's `train_student.py`, RepDistiller's: 240 epochs, batch 64 (the script's), SGD momentum
0.9, weight decay 5e-4, lr 0.05 (0.01 for MobileNetV2, ShuffleV1 and ShuffleV2 students), x0.1 from the first step
of epochs 151, 181, 211, RepDistiller's data pipeline (jaxkd/config/default.py repdistiller_recipe); the
temperature is trained and weight-decayed with the student (its `trainable_list`). The teacher is expected where
CTKD's README puts it, `save/models/<T>_vanilla/ckpt_epoch_240.pth`; `--config.teacher.checkpoint` points
elsewhere. The recipe lives in jaxkd/config/recipes.py (`ctkd`), which this config reads.
"""

from jaxkd.config import recipes


def get_config(arguments: str = "wrn_40_2,wrn_16_2,ctkd"):
    return recipes.ctkd(*recipes.teacher_student_method(arguments, "configs/ctkd.py", recipes.CTKD_METHODS))
