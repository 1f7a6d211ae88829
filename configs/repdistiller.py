"""RepDistiller's benchmark recipe for any teacher, student and method: `--config configs/repdistiller.py:T,S,M`.

    python -m jaxkd.train --config configs/repdistiller.py:resnet32x4,resnet8x4,crd --workdir workdirs/crd_r32x4_r8x4
    python -m jaxkd.train --config configs/repdistiller.py:wrn_40_2,ShuffleV1,kd --workdir workdirs/kd_w402_sv1 \
        --config.seed=1

T and S are names of RepDistiller's `models/__init__.py` model_dict, in its own spelling (its `resnet56` is the
post-activation resnet jaxkd calls `rd_resnet56`; the seed's pre-activation resnets are not in its table) or any
jaxkd name. M is a method of its `scripts/run_cifar_distill.sh` that jaxkd has, with that script's -r/-a/-b
weights (`METHOD_WEIGHTS`), or `none` for the student trained alone. The recipe is `train_student.py`'s:
240 epochs, batch 64, SGD momentum 0.9, weight decay 5e-4, lr 0.05 (0.01 for MobileNetV2, ShuffleV1 and
ShuffleV2 students, as its `opt.learning_rate` rule says), x0.1 from the first step of epochs 151, 181, 211,
RepDistiller's data pipeline (jaxkd/config/default.py repdistiller_recipe). The teacher is expected where
RepDistiller's `scripts/fetch_pretrained_teachers.sh` puts it, `save/models/<T>_vanilla/ckpt_epoch_240.pth`;
`--config.teacher.checkpoint` points elsewhere.
"""

from configs import default
from jaxkd.methods import METHODS, config_section
from jaxkd.models import canonical_name

# RepDistiller's model_dict names whose jaxkd name differs (its CIFAR resnets are post-activation)
REPDISTILLER_NAMES = {f"resnet{depth}": f"rd_resnet{depth}" for depth in (8, 14, 20, 32, 44, 56, 110)}
LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # train_student.py: learning_rate = 0.01
# scripts/run_cifar_distill.sh: method -> (gamma -r, alpha -a, beta -b); crd_kd is its "CRD+KD" column
METHOD_WEIGHTS = {
    "none": (1.0, 0.0, 0.0),
    "kd": (0.1, 0.9, 0.0),
    "fitnet": (1.0, 0.0, 100.0),
    "at": (1.0, 0.0, 1000.0),
    "crd": (1.0, 0.0, 0.8),
    "crd_kd": (1.0, 1.0, 0.8),
    "sp": (1.0, 0.0, 3000.0),
    "cc": (1.0, 0.0, 0.02),
    "vid": (1.0, 0.0, 1.0),
    "rkd": (1.0, 0.0, 1.0),
    "pkt": (1.0, 0.0, 30000.0),
    "nst": (1.0, 0.0, 50.0),
    "ab": (1.0, 0.0, 1.0),  # abound: its term is 0 in training (the init stage trains it)
    "ft": (1.0, 0.0, 200.0),  # factor
    "fsp": (1.0, 0.0, 50.0),  # its term is 0 in training (the init stage trains it)
}


def jaxkd_name(repdistiller_name: str) -> str:
    """The jaxkd architecture of a RepDistiller model name (or of a jaxkd name, unchanged)."""
    return canonical_name(REPDISTILLER_NAMES.get(repdistiller_name, repdistiller_name))


def repdistiller_name(name: str) -> str:
    """RepDistiller's model_dict name of a jaxkd architecture (`rd_resnet56` -> `resnet56`, `wideresnet40_2` ->
    `wrn_40_2`, `rd_resnet32x4` -> `resnet32x4`): the spelling of its teacher files' folders."""
    name = canonical_name(name)
    for jaxkd_prefix, repdistiller_prefix in (("rd_resnet", "resnet"), ("wideresnet", "wrn_")):
        if name.startswith(jaxkd_prefix):
            return repdistiller_prefix + name[len(jaxkd_prefix):]
    return name


def teacher_student_method(arguments: str, config_file: str, methods) -> tuple[str, str, str]:
    """`TEACHER,STUDENT,METHOD` of a parameterized config (`config_file`), METHOD one of `methods`."""
    try:
        teacher, student, method = (part.strip() for part in arguments.split(","))
    except ValueError:
        raise ValueError(f"{config_file} takes TEACHER,STUDENT,METHOD, got {arguments!r}") from None
    if method not in methods:
        raise ValueError(f"{config_file}: method {method!r} is not one of {', '.join(methods)}")
    return teacher, student, method


def get_config(arguments: str = "wrn_40_2,wrn_16_2,kd"):
    teacher, student, method = teacher_student_method(arguments, "configs/repdistiller.py", METHOD_WEIGHTS)
    config = default.repdistiller_recipe(default.get_config())
    config.model = jaxkd_name(student)
    config.method = "crd" if method == "crd_kd" else method
    config.loss.gamma, config.loss.alpha, config.loss.beta = METHOD_WEIGHTS[method]
    config.loss.kd_temperature = 4.0
    if config.model in LOW_LR_STUDENTS:
        config.optimizer.lr = 0.01
    if method != "none":
        config.teacher.arch = jaxkd_name(teacher)
        config.teacher.checkpoint = f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"
    if METHODS[config.method].defaults:  # a method with hyperparameters: its whole section, recorded
        config[config.method] = config_section(config.method)
    return config
