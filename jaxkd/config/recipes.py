"""The recipe tables: RepDistiller's, mdistiller's (CIFAR-100 and ImageNet) and CTKD's published settings by method
and (teacher, student) pair, and jaxkd's own BYOT and DML recipes, each as a full config.

configs/*.py are views of these tables (`configs/repdistiller.py:T,S,M`, `configs/kd_wrn.py`, ...); the run list
(`jaxkd.runs`) and the benchmark (`jaxkd.bench`) read them here, so the library never imports `configs`. Where
each value comes from: the comments below, docs/methods.md, tests/test_recipes.py and tests/test_config_imagenet.py.
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
MDISTILLER_METHODS = ("dkd", "dist", "reviewkd", "kdsvd", "ofd", "kd_ls", "dkd_ls", "kd_dot", "dkd_dot", "nkd", "wttm",
                      "sdd_kd", "sdd_dkd", "catkd", "mlkd")
# the entry that stands for a jaxkd method whose entries have other names (the bench's recipe of `sdd`)
MDISTILLER_ENTRY_OF = {"sdd": "sdd_kd"}
# DOT: configs/cifar100/dot/*.yaml (res32x4_res8x4, vgg13_vgg8, res32x4_shuv2): KD with CFG.KD's weights and
# temperature under the `dot` trainer with DOT.DELTA 0.075 (also CFG.SOLVER.DOT.DELTA, the default); mdistiller has
# no DKD + DOT config: `dkd_dot` is its DKD entry under the same trainer and delta
DOT_DELTA = 0.075
# MLKD: Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml (mdistiller's trainer,
# tools/train_ours.py): SOLVER.LR 0.025 (0.01 for the MobileNetV2 and Shuffle students), SOLVER.EPOCHS 240 but where
# listed here (RepDistiller's names), the lr decay still at 150, 180, 210; CFG.KD's CE weight 0.1, KD weight 0.9, T 4
MLKD_LR = 0.025
MLKD_EPOCHS = {("resnet32x4", "ShuffleV1"): 960, ("resnet32x4", "ShuffleV2"): 960, ("ResNet50", "MobileNetV2"): 480,
               ("vgg13", "MobileNetV2"): 480, ("wrn_40_2", "ShuffleV1"): 480}
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

# zkxufo/TTM README.md, its one WTTM command (`--add wttm --ttm_l 0.2 ... -a 4`, WTTM beside CRD on vgg13 -> vgg8):
# the exponent and the weight of the WTTM term for every pair. The paper's per-pair values (its appendix A.4) are
# not in the repository.
WTTM_EXPONENT, WTTM_WEIGHT = 0.2, 4.0
# shicaiwei123/SDD-CVPR2024 (on mdistiller): its CIFAR-100 runs' --M where not [1,2,4] (teacher_resnet32x4.sh,
# teacher_vgg.sh; jaxkd names), by base loss
SDD_SCALES = {("kd", "rd_resnet32x4", "rd_resnet8x4"): "1,2", ("kd", "vgg13", "vgg8"): "1,2",
              ("dkd", "vgg13", "vgg8"): "1,2"}
# its configs/cifar100/sdd_dkd/*.yaml DKD.BETA where a pair's file sets it, else CFG.DKD's 8
SDD_DKD_BETA = {("rd_resnet110", "rd_resnet32"): 2.0, ("rd_resnet56", "rd_resnet20"): 2.0,
                ("vgg13", "MobileNetV2"): 6.0, ("vgg13", "ShuffleV1"): 6.0, ("vgg13", "vgg8"): 6.0,
                ("wideresnet40_2", "MobileNetV2"): 6.0, ("wideresnet40_2", "wideresnet16_2"): 6.0,
                ("wideresnet40_2", "wideresnet40_1"): 6.0}
# GzyAftermath/CAT-KD configs/cifar100/CAT_KD/*.yaml: (CAT_loss_weight, CAM_RESOLUTION, IF_NORMALIZE); other pairs
# take mdistiller/engine/cfg.py CFG.CAT_KD's (400, 2, True)
CATKD = {("rd_resnet110", "rd_resnet32"): (1.8, 2, False), ("rd_resnet32x4", "rd_resnet8x4"): (15.0, 2, False),
         ("rd_resnet32x4", "ShuffleV1"): (600.0, 4, True), ("rd_resnet32x4", "ShuffleV2"): (600.0, 4, True),
         ("ResNet50", "MobileNetV2"): (40.0, 2, True), ("rd_resnet56", "rd_resnet20"): (0.7, 2, False),
         ("vgg13", "MobileNetV2"): (15.0, 2, True), ("vgg13", "vgg8"): (4.5, 2, False),
         ("wideresnet40_2", "ShuffleV1"): (80.0, 4, True), ("wideresnet40_2", "wideresnet16_2"): (12.0, 2, False),
         ("wideresnet40_2", "wideresnet40_1"): (1.5, 2, False)}
CATKD_DEFAULT = (400.0, 2, True)

# ---------------------------------------------------------------------------------------------- ImageNet
# megvii-research/mdistiller configs/imagenet/{r34_r18,r50_mv1}/*.yaml over mdistiller/engine/cfg.py, and for DIST
# and KD + LS their own repositories' ImageNet settings. The pairs, in jaxkd's names, and the folder of mdistiller's
# configs/imagenet/ that holds each pair's files; a pair outside this table takes r34_r18's settings.
IMAGENET_PAIRS = {("tv_resnet34", "tv_resnet18"): "r34_r18", ("tv_resnet50", "MobileNetV1"): "r50_mv1"}
IMAGENET_METHODS = ("kd", "at", "crd", "reviewkd", "dkd", "ofd", "kd_dot", "dist", "kd_ls")
# the pairs an upstream repository gives each method's ImageNet settings for (its config file or README command);
# on the others the entry is jaxkd's extension of the nearest one, not a published setting
IMAGENET_UPSTREAM = {**{method: ("r34_r18", "r50_mv1") for method in IMAGENET_METHODS},
                     "ofd": ("r50_mv1",),  # configs/imagenet/r50_mv1/ofd.yaml only
                     "kd_ls": ("r34_r18",)}  # logit-standardization-KD README: its one ImageNet command
# mdistiller's SOLVER (every yaml: 100 epochs, LR_DECAY_STAGES [30, 60, 90] x0.1, WEIGHT_DECAY 1e-4, MOMENTUM 0.9):
# LR 0.2 at BATCH_SIZE 512, lowered with the batch where a method's file lowers the batch (0.1 at 256, 0.05 at 128):
# lr = 0.2 * batch / 512 throughout, jaxkd's optimizer.lr_scaling "linear" with lr_reference_batch 512.
IMAGENET_LR, IMAGENET_REFERENCE_BATCH = 0.2, 512
IMAGENET_BATCH = {"crd": 256, "reviewkd": 256, "ofd": 128, "dist": 256}  # the rest: 512
# (DKD.BETA, REVIEWKD_WEIGHT, REVIEWKD.MAX_MID_CHANNEL) by folder
IMAGENET_DKD_BETA = {"r34_r18": 0.5, "r50_mv1": 2.0}
IMAGENET_REVIEWKD = {"r34_r18": (1.0, 512), "r50_mv1": (8.0, 256)}  # r34_r18 leaves MAX_MID_CHANNEL at cfg.py's
IMAGENET_DOT_DELTA = 0.09  # configs/imagenet/*/dot.yaml SOLVER.DOT.DELTA
OFD_IMAGENET_WEIGHT = 0.0001  # configs/imagenet/r50_mv1/ofd.yaml OFD.LOSS.FEAT_WEIGHT
# torchvision's file names of its released ImageNet weights (IMAGENET1K_V1: the weights mdistiller's
# models/imagenet/resnet.py loads, there under the older names resnet34-333f7ec4.pth, resnet50-19c8e357.pth), in the
# folder torchvision downloads them to (torch.hub's default cache)
TORCHVISION_FILES = {"tv_resnet18": "resnet18-f37072fd.pth", "tv_resnet34": "resnet34-b627a593.pth",
                     "tv_resnet50": "resnet50-0676ba61.pth", "tv_resnet101": "resnet101-63fe2227.pth",
                     "tv_resnet152": "resnet152-394f9c45.pth"}
TORCHVISION_FOLDER = "~/.cache/torch/hub/checkpoints"


def imagenet(teacher: str, student: str, method: str) -> ConfigDict:
    """mdistiller's ImageNet recipe for `method`, one of IMAGENET_METHODS, on the pair (jaxkd names, or `mobilenet_v1`
    and other aliases): configs/imagenet/<pair>/<method>.yaml over engine/cfg.py; DIST's from
    hunto/image_classification_sota `configs/strategies/distill/resnet_dist.yaml`, KD + LS's from
    sunshangquan/logit-standardization-KD (its `configs/imagenet/r34_r18/kd.yaml` with the README's `--logit-stand
    --base-temp 2 --kd-weight 9`). The teacher is torchvision's released file where torchvision downloads it.

    The data: TFDS's `imagenet2012` through the streaming path (`data.source = "tfds_images"`, docs/data.md), with
    torchvision's transforms (RandomResizedCrop 224 + flip; Resize 256 + CenterCrop 224) and normalization, as
    mdistiller's `mdistiller/dataset/imagenet.py`; full batches only (the streaming path's rule: the epoch's last
    partial batch, 1,281,167 mod the batch, is dropped where mdistiller's loader keeps it)."""
    config = get_config()
    config.data.source, config.data.tfds_name, config.data.normalization = "tfds_images", "imagenet2012", "imagenet"
    config.data.drop_last = True
    config.model, config.teacher.arch = canonical_name(student), canonical_name(teacher)
    folder = IMAGENET_PAIRS.get((config.teacher.arch, config.model), "r34_r18")
    config.teacher.checkpoint = (f"{TORCHVISION_FOLDER}/{TORCHVISION_FILES[config.teacher.arch]}"
                                 if config.teacher.arch in TORCHVISION_FILES else "")
    config.epochs = 100
    config.batch_size = IMAGENET_BATCH.get(method.removesuffix("_dot"), 512)
    config.optimizer.lr, config.optimizer.lr_reference_batch = IMAGENET_LR, IMAGENET_REFERENCE_BATCH
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.lr_decay_epochs = (30, 60, 90)
    config.optimizer.lr_decay_timing = "repdistiller"  # engine/utils.py adjust_learning_rate: from epoch 31, 61, 91
    config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, 0.0, 1.0
    if method in ("kd", "kd_dot"):  # configs/imagenet/*/kd.yaml, dot.yaml: T 1, CE 0.5, KD 0.5
        config.method = "kd"
        config.loss.gamma, config.loss.alpha, config.loss.beta, config.loss.kd_temperature = 0.5, 0.5, 0.0, 1.0
        if method == "kd_dot":
            config.optimizer.dot, config.optimizer.dot_delta = True, IMAGENET_DOT_DELTA
        return config
    if method == "kd_ls":  # its kd.yaml: CE_WEIGHT 1.0 (not mdistiller's 0.5); --kd-weight 9, --base-temp 2
        config.method = "kd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, LS_KD_WEIGHT, 0.0
        config.loss.kd_temperature, config.loss.logit_standardization = LS_TEMPERATURE, True
        return config
    config.method = method
    if method == "at":  # engine/cfg.py CFG.AT: CE 1, FEAT_WEIGHT 1000, P 2
        config.loss.beta = 1000.0
        config.at = config_section("at", p=2)
    elif method == "crd":  # CFG.CRD: CE 1, FEAT_WEIGHT 0.8, DIM 128, NCE K 16384, T 0.07, MOMENTUM 0.5
        config.loss.beta = 0.8
        # 1.28M bank rows: each device holds its block of the banks (jaxkd's layout, docs/methods.md CRD)
        config.crd = config_section("crd", feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5, bank_layout="sharded")
    elif method == "reviewkd":  # REVIEWKD: CE 1, the pair's weight and mid channels, WARMUP_EPOCHS 1, STU_PREACT
        config.loss.beta, max_mid_channels = IMAGENET_REVIEWKD[folder]
        config.reviewkd = config_section("reviewkd", warmup=1, student_preact=True, max_mid_channels=max_mid_channels)
    elif method == "dkd":  # DKD: CE 1, ALPHA 1 (cfg.py), the pair's BETA, T 1, WARMUP 1
        config.dkd = config_section("dkd", alpha=1.0, beta=IMAGENET_DKD_BETA[folder], temperature=1.0, warmup=1)
    elif method == "ofd":  # OFD.LOSS: CE 1 (cfg.py), FEAT_WEIGHT 0.0001; CONNECTOR.KERNEL_SIZE 1 (cfg.py)
        config.loss.beta = OFD_IMAGENET_WEIGHT
        config.ofd = config_section("ofd")
    else:  # dist: resnet_dist.yaml ori_loss_weight 1, kd_loss_weight 2, kd 'dist' (kd_loss.py: DIST(1, 1, tau=1)),
        # batch 32 x 8 GPUs (README: tools/dist_train.sh 8), lr 0.1, decay x0.1 every 30 epochs, SGD Nesterov
        # (tools/train.py: nesterov=not args.sgd_no_nesterov)
        config.loss.beta = 2.0
        config.dist = config_section("dist", beta=1.0, gamma=1.0, tau=1.0)
        config.optimizer.nesterov = True
    return config


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
    """mdistiller's CIFAR-100 recipe (and DIST's, ReviewKD's, logit standardization's, NKD's, WTTM's, SDD's,
    CAT-KD's and MLKD's weights and settings, from their code) for `method`, one of MDISTILLER_METHODS (or "kd",
    `kd_dot`'s base), on the pair in RepDistiller's or jaxkd's spelling; the teacher file is where mdistiller's
    `cifar_teachers.tar` puts it."""
    if method in ("kd_dot", "dkd_dot"):  # the method's entry, trained with DOT
        config = mdistiller(teacher, student, method.removesuffix("_dot"))
        config.optimizer.dot, config.optimizer.dot_delta = True, DOT_DELTA
        return config
    config = repdistiller_recipe(get_config())
    config.model, config.teacher.arch = jaxkd_name(student), jaxkd_name(teacher)
    config.teacher.checkpoint = f"download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    if config.model in LOW_LR_STUDENTS:
        config.optimizer.lr = 0.01
    pair = (config.teacher.arch, config.model)
    beta = DKD_BETA.get(pair, 8.0)
    named_pair = (repdistiller_name(config.teacher.arch), repdistiller_name(config.model))
    if method == "kd":  # mdistiller's CFG.KD (engine/cfg.py): CE weight 0.1, KD weight 0.9, temperature 4
        config.method = "kd"
        config.loss.gamma, config.loss.alpha, config.loss.beta, config.loss.kd_temperature = 0.1, 0.9, 0.0, 4.0
        return config
    if method == "kd_ls":
        temperature, weight = KD_LS.get(named_pair, (LS_TEMPERATURE, LS_KD_WEIGHT))
        config.method = "kd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = 0.1, weight, 0.0
        config.loss.kd_temperature, config.loss.logit_standardization = temperature, True
        return config
    if method in ("sdd_kd", "sdd_dkd"):  # SDD_KD: CFG.KD's CE 0.1, KD 0.9, T 4; SDD_DKD: CFG.DKD's, warm-up 20
        base = method.removeprefix("sdd_")
        config.method = "sdd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = (0.1, 0.0, 0.9) if base == "kd" else (1.0, 0.0, 1.0)
        dkd_settings = {} if base == "kd" else {"dkd_beta": SDD_DKD_BETA.get(pair, 8.0)}
        config.sdd = config_section("sdd", base=base, scales=SDD_SCALES.get((base, *pair), "1,2,4"), **dkd_settings)
        return config
    if method == "mlkd":  # CE 0.1 on the weak view (gamma); the term holds the strong view's CE and the KD weight 0.9
        config.method = "mlkd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = 0.1, 0.0, 1.0
        config.optimizer.lr = 0.01 if config.model in LOW_LR_STUDENTS else MLKD_LR
        config.epochs = MLKD_EPOCHS.get(named_pair, 240)
        config.mlkd = config_section("mlkd")
        return config
    if method == "catkd":  # CE weight 1, CAT_loss_weight as beta
        weight, resolution, normalize = CATKD.get(pair, CATKD_DEFAULT)
        config.method = "catkd"
        config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, 0.0, weight
        config.catkd = config_section("catkd", resolution=resolution, normalize=normalize)
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
    elif method == "nkd":  # cls_KD's CIFAR-100 config: CE 1, NKD 1 (temp 3, gamma 3.5: the section's defaults)
        config.nkd = config_section("nkd")
    elif method == "wttm":  # zkxufo/TTM train_student.py: -r 1 -a 0 -b WEIGHT --ttm_l EXPONENT
        config.loss.beta = WTTM_WEIGHT
        config.wttm = config_section("wttm", exponent=WTTM_EXPONENT)
    elif method == "ofd":
        config.loss.beta = 0.001  # CFG.OFD.LOSS.FEAT_WEIGHT (CE_WEIGHT 1)
        config.ofd = config_section("ofd")
    else:
        config.loss.beta = REVIEWKD_WEIGHT.get(pair, 5.0)
        config.reviewkd = config_section("reviewkd")
    return config


# ------------------------------------------------------------------------------------------------- CTKD
# zhengli97/CTKD is RepDistiller's train_student.py with a learnable temperature: its recipe is RepDistiller's, and
# its scripts/run_cifar_distill.sh weights (-r, -a, -b) are, for KD, 0.1, 0.9 (KD at the learned temperature),
# 0; for DKD (its commented line), 1, 0, 1 with --dkd_alpha 1 --dkd_beta 2. In jaxkd the learned-temperature loss
# is CTKD's term (loss.beta) and the engine's fixed-temperature KD term (loss.alpha) is 0.
CTKD_METHODS = ("ctkd", "ctkd_dkd")


def ctkd(teacher: str, student: str, method: str, teacher_checkpoint: str | None = None) -> ConfigDict:
    """CTKD's recipe for `method`, one of CTKD_METHODS (the KD or the DKD base), on the pair in RepDistiller's or
    jaxkd's spelling: RepDistiller's (`repdistiller`), the teacher where CTKD's README puts it (./save/models)."""
    config = repdistiller(teacher, student, "kd", teacher_checkpoint)
    config.method = "ctkd"
    if method == "ctkd":
        config.loss.gamma, config.loss.alpha, config.loss.beta = 0.1, 0.0, 0.9
        config.ctkd = config_section("ctkd")
    else:
        config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, 0.0, 1.0
        config.ctkd = config_section("ctkd", base="dkd")
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
    entry = MDISTILLER_ENTRY_OF.get(method, method)
    if entry in MDISTILLER_METHODS:
        return f"configs/mdistiller.py:{','.join(RECIPE_PAIR)},{entry}", mdistiller(*RECIPE_PAIR, entry)
    if method == "ctkd":
        return f"configs/ctkd.py:{arguments}", ctkd(*RECIPE_PAIR, method)
    own = {"byot": ("configs/byot_wrn.py", byot), "dml": ("configs/dml_wrn.py", dml)}
    if method not in own:
        return None
    name, recipe = own[method]
    return name, recipe()
