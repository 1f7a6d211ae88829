"""The recipe tables: RepDistiller's and mdistiller's published settings by method and (teacher, student) pair,
and jaxkd's own BYOT and DML recipes, each as a full config.

configs/*.py are views of these tables (`configs/repdistiller.py:T,S,M`, `configs/kd_wrn.py`, ...); the run list
(`jaxkd.runs`) and the benchmark (`jaxkd.bench`) read them here, so the library never imports `configs`. Where
each value comes from: the comments below, docs/methods.md and tests/test_recipes.py.
"""

from ml_collections import ConfigDict

from jaxkd.config.default import get_config, repdistiller_recipe
from jaxkd.methods import METHODS, config_section
from jaxkd.models import canonical_name

# ------------------------------------------------------------------------------------------ RepDistiller
# RepDistiller's model_dict names whose jaxkd name differs (its CIFAR resnets are post-activation)
REPDISTILLER_NAMES = {f"resnet{depth}": f"rd_resnet{depth}" for depth in (8, 14, 20, 32, 44, 56, 110)}
LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # train_student.py: learning_rate = 0.01
# scripts/run_cifar_distill.sh: method -> (gamma -r, alpha -a, beta -b); crd_kd is its "CRD+KD" column
REPDISTILLER_WEIGHTS = {
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

# ------------------------------------------------------------------------------------------- mdistiller
MDISTILLER_METHODS = ("dkd", "dist", "reviewkd", "kdsvd", "kd_ls", "dkd_ls")
# mdistiller configs/cifar100/dkd/*.yaml: DKD.BETA where it differs from CFG.DKD's 8 (jaxkd names)
DKD_BETA = {
    ("rd_resnet56", "rd_resnet20"): 2.0,
    ("rd_resnet110", "rd_resnet32"): 2.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("wideresnet40_2", "wideresnet16_2"): 6.0,
    ("wideresnet40_2", "wideresnet40_1"): 6.0,
}
# logit-standardization-KD: (base temperature, KD weight) of the KD+Ours log its README links for the pair, where
# not the README commands' (2, 9); RepDistiller's names, as in the log names
KD_LS = {("vgg13", "vgg8"): (3.0, 9.0), ("resnet110", "resnet20"): (4.0, 12.0), ("resnet32x4", "wrn_16_2"): (3.0, 9.0),
         ("resnet32x4", "wrn_40_2"): (3.0, 9.0), ("wrn_40_2", "MobileNetV2"): (3.0, 9.0),
         ("vgg13", "MobileNetV2"): (3.0, 9.0), ("ResNet50", "MobileNetV2"): (3.0, 1.0)}
# (base temperature, KD weight, DKD beta before the weight; None: the pair's mdistiller beta) of the DKD+Ours logs
DKD_LS = {("vgg13", "vgg8"): (2.0, 15.0, 2.0), ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0),
          ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0), ("resnet56", "resnet20"): (3.0, 18.0, 2.0),
          ("resnet110", "resnet32"): (2.0, 15.0, 2.0), ("resnet110", "resnet20"): (2.0, 15.0, 2.0),
          ("resnet32x4", "wrn_16_2"): (2.0, 9.0, 2.0), ("resnet32x4", "wrn_40_2"): (2.0, 9.0, 8.0),
          ("wrn_40_2", "resnet8x4"): (2.0, 18.0, 2.0), ("wrn_40_2", "MobileNetV2"): (2.0, 15.0, 2.0),
          ("vgg13", "MobileNetV2"): (3.0, 9.0, 2.0), ("ResNet50", "MobileNetV2"): (2.0, 15.0, 2.0)}
LS_TEMPERATURE, LS_KD_WEIGHT = 2.0, 9.0  # tools/train.py: --base-temp 2 --kd-weight 9 (the README's commands)
# dvlab-research/ReviewKD script/reviewKD.sh --kd-loss-weight where not mdistiller's 5 (jaxkd names)
REVIEWKD_WEIGHT = {("rd_resnet56", "rd_resnet20"): 0.6, ("rd_resnet110", "rd_resnet32"): 1.0,
                   ("rd_resnet32x4", "ShuffleV2"): 8.0}

# ----------------------------------------------------------------------------- the benchmark's recipes
# The pair whose entry gives a method's loss weights and section when the bench times a method the config does
# not train (RepDistiller's first benchmark pair), and the config a user would type for each table.
RECIPE_PAIR = ("wrn_40_2", "wrn_16_2")


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


def repdistiller(teacher: str, student: str, method: str, teacher_checkpoint: str | None = None) -> ConfigDict:
    """RepDistiller's recipe (`train_student.py` with `run_cifar_distill.sh`'s weights) for `method` (a key of
    REPDISTILLER_WEIGHTS) on the pair, in RepDistiller's or jaxkd's spelling. The teacher file is where
    RepDistiller's `fetch_pretrained_teachers.sh` puts it unless `teacher_checkpoint` is given."""
    config = repdistiller_recipe(get_config())
    config.model = jaxkd_name(student)
    config.method = "crd" if method == "crd_kd" else method
    config.loss.gamma, config.loss.alpha, config.loss.beta = REPDISTILLER_WEIGHTS[method]
    config.loss.kd_temperature = 4.0
    if config.model in LOW_LR_STUDENTS:
        config.optimizer.lr = 0.01
    if method != "none":
        config.teacher.arch = jaxkd_name(teacher)
        config.teacher.checkpoint = (f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"
                                     if teacher_checkpoint is None else teacher_checkpoint)
    if METHODS[config.method].defaults:  # a method with hyperparameters: its whole section, recorded
        config[config.method] = config_section(config.method)
    return config


def mdistiller(teacher: str, student: str, method: str) -> ConfigDict:
    """mdistiller's CIFAR-100 recipe (and DIST's, ReviewKD's and logit standardization's weights) for `method`,
    one of MDISTILLER_METHODS, on the pair in RepDistiller's or jaxkd's spelling; the teacher file is where
    mdistiller's `cifar_teachers.tar` puts it."""
    config = repdistiller_recipe(get_config())
    config.model, config.teacher.arch = jaxkd_name(student), jaxkd_name(teacher)
    config.teacher.checkpoint = f"download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    if config.model in LOW_LR_STUDENTS:
        config.optimizer.lr = 0.01
    pair = (config.teacher.arch, config.model)
    beta = DKD_BETA.get(pair, 8.0)
    named_pair = (repdistiller_name(config.teacher.arch), repdistiller_name(config.model))
    if method == "kd_ls":
        temperature, weight = KD_LS.get(named_pair, (LS_TEMPERATURE, LS_KD_WEIGHT))
        config.method = "kd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = 0.1, weight, 0.0
        config.loss.kd_temperature, config.loss.logit_standardization = temperature, True
        return config
    config.method = "dkd" if method == "dkd_ls" else method
    config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, 0.0, 1.0
    if method == "dkd":
        config.dkd = config_section("dkd", beta=beta)
    elif method == "dkd_ls":
        temperature, weight, logged_beta = DKD_LS.get(named_pair, (LS_TEMPERATURE, LS_KD_WEIGHT, None))
        beta = beta if logged_beta is None else logged_beta
        config.dkd = config_section("dkd", alpha=weight, beta=beta * weight, temperature=temperature)
        config.loss.logit_standardization = True
    elif method == "dist":
        config.loss.beta = 2.0
        config.dist = config_section("dist")
    elif method == "kdsvd":  # mdistiller's kdsvd_loss: its (C*H, W) matrices, not RepDistiller's (H*W, C)
        config.kdsvd = config_section("kdsvd", layout="mdistiller")
    else:
        config.loss.beta = REVIEWKD_WEIGHT.get(pair, 5.0)
        config.reviewkd = config_section("reviewkd")
    return config


# ------------------------------------------------------------------------------------ jaxkd's own recipes
def byot() -> ConfigDict:
    """BYOT on WRN16-2 with the seed's recipe and BYOT-U's settings (jaxkd/methods/byot.py): the deepest
    classifier's CE weighted 1 - alpha as in BYOT-U, no KD term, the term carrying its own weights."""
    config = get_config()
    config.model = "wideresnet16_2"
    config.method = "byot"
    config.byot = config_section("byot")
    config.loss.gamma = 1.0 - config.byot.alpha
    config.loss.alpha = 0.0
    config.loss.beta = 1.0
    return config


def dml() -> ConfigDict:
    """DML with two WRN16-2 peers on the seed's recipe: the student's CE, then the peers' CEs and every peer's
    mutual-learning KL unweighted in the term."""
    config = get_config()
    config.model = "wideresnet16_2"
    config.method = "dml"
    config.loss.gamma = 1.0
    config.loss.alpha = 0.0
    config.loss.beta = 1.0
    config.dml = config_section("dml", peers=("wideresnet16_2",))
    return config


def method_recipe(method: str) -> tuple[str, ConfigDict] | None:
    """(the config a user would type for it, its config): the recipe of `method`, a key of jaxkd's METHODS, that
    the benchmark takes loss weights and sections from: its RepDistiller or mdistiller entry on RECIPE_PAIR, or
    jaxkd's own recipe; None for a method no table has."""
    arguments = f"{','.join(RECIPE_PAIR)},{method}"
    if method in REPDISTILLER_WEIGHTS:
        return f"configs/repdistiller.py:{arguments}", repdistiller(*RECIPE_PAIR, method)
    if method in MDISTILLER_METHODS:
        return f"configs/mdistiller.py:{arguments}", mdistiller(*RECIPE_PAIR, method)
    own = {"byot": ("configs/byot_wrn.py", byot), "dml": ("configs/dml_wrn.py", dml)}
    if method not in own:
        return None
    name, recipe = own[method]
    return name, recipe()
