"""RepDistiller's benchmark recipe for any teacher, student and method: `--config configs/repdistiller.py:T,S,M`.

    python -m jaxkd.train --config configs/repdistiller.py:resnet32x4,resnet8x4,crd --workdir workdirs/crd_r32x4_r8x4
    python -m jaxkd.train --config configs/repdistiller.py:wrn_40_2,ShuffleV1,kd --workdir workdirs/kd_w402_sv1 \
        --config.seed=1

T and S are names of RepDistiller's `models/__init__.py` model_dict, in its own spelling (its `resnet56` is the
post-activation resnet jaxkd calls `rd_resnet56`; the seed's pre-activation resnets are not in its table) or any
jaxkd name. M is a method of its `scripts/run_cifar_distill.sh` that jaxkd has, with that script's -r/-a/-b
weights, or `none` for the student trained alone (the table: jaxkd/config/recipes.py `REPDISTILLER_WEIGHTS`).
The recipe is `train_student.py`'s:
240 epochs, batch 64, SGD momentum 0.9, weight decay 5e-4, lr 0.05 (0.01 for MobileNetV2, ShuffleV1 and
ShuffleV2 students, as its `opt.learning_rate` rule says), x0.1 from the first step of epochs 151, 181, 211,
RepDistiller's data pipeline (jaxkd/config/default.py repdistiller_recipe). The teacher is expected where
RepDistiller's `scripts/fetch_pretrained_teachers.sh` puts it, `save/models/<T>_vanilla/ckpt_epoch_240.pth`;
`--config.teacher.checkpoint` points elsewhere.
"""

from jaxkd.config import recipes


def get_config(arguments: str = "wrn_40_2,wrn_16_2,kd"):
    return recipes.repdistiller(*recipes.teacher_student_method(arguments, "configs/repdistiller.py",
                                                                recipes.REPDISTILLER_WEIGHTS))
