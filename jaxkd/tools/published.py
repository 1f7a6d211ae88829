"""Published CIFAR-100 and ImageNet test top-1 numbers the report (`jaxkd.tools.report`) puts beside a group of runs, each with its
source and how it was scored (last or best epoch, how many runs), as far as the source states it.

Keys are jaxkd's: canonical architecture names (RepDistiller's post-activation `resnet56` is `rd_resnet56`, its
`wrn-40-2` is `wideresnet40_2`, its ShuffleNetV1 is `ShuffleV1`; `jaxkd.models`), the method as the report names
it (`jaxkd.tools.report.method_label`: `none` for a model trained alone, `crd+kd` for CRD with the KD term, `kd+ls` and
`dkd+ls` with logit standardization, `kd+dot` with the DOT optimizer; methods jaxkd does not implement keep their
reference's short name), and SaliencyMix on or off. The tables below are written as their READMEs print them, one
value per pair in the header's order, so that they can be checked cell by cell against the README
(tests/test_report.py). Each source names the data its numbers are of (`Source.data`: "CIFAR-100" or "ImageNet",
ILSVRC 2012's validation set); the report puts a number only beside runs of that data, so the two tables never mix.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    where: str  # the file and section the numbers are copied from
    scoring: str  # "last" or "best" epoch
    scoring_basis: str  # why that scoring
    runs: int | None  # runs averaged per number; None when the source does not say
    # The data and recipe its numbers were trained with: the CIFAR-100 sources train for 240 epochs at batch 64
    # (docs/methods.md), the ImageNet ones for 100 at their own batch; the report puts a number only beside runs of
    # that data, length and batch. None: the source's numbers come from recipes that differ in it (torchdistill's
    # table), so it is not compared.
    data: str = "CIFAR-100"
    epochs: int | None = 240
    batch_size: int | None = 64

    @property
    def recipe(self) -> str:
        epochs = "epochs as each number's recipe" if self.epochs is None else f"{self.epochs} epochs"
        batch = "batch as each number's recipe" if self.batch_size is None else f"batch {self.batch_size}"
        return f"{self.data}, {epochs}, {batch}"


SOURCES = {
    "RepDistiller README": Source(
        "RepDistiller README", "github.com/HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100'",
        "last", "train_student.py, at its end: 'The results reported in the paper/README is from the last epoch'",
        None),
    "pytorch-kd README": Source(
        "pytorch-kd README", "pytorch-kd README.md (the seed), 'Baseline Models' and 'Results on CIFAR100C'",
        "last", "the seed's recipe is RepDistiller's, scored at the last epoch (docs/reproduce.md)", 1),
    "mdistiller README": Source(
        "mdistiller README", "github.com/megvii-research/mdistiller README.md, 'Decoupled Knowledge Distillation', "
        "'Main Benchmark Results', CIFAR-100", "best",
        "mdistiller/engine/trainer.py ends a run with its best_acc (the best epoch's test accuracy)", None),
    "mdistiller README (DOT)": Source(
        "mdistiller README (DOT)", "github.com/megvii-research/mdistiller README.md, 'DOT: A Distillation-Oriented "
        "Trainer', 'Main Benchmark Results', On CIFAR-100", "best",
        "mdistiller/engine/trainer.py's DOT trainer ends a run with its best_acc (the best epoch's test accuracy)",
        None),
    "DIST README": Source(
        "DIST README", "github.com/hunto/DIST_KD README.md, 'Reproducing our results', 'CIFAR-100' (mean ± std)",
        "best", "its classification/ (hunto/image_classification_sota) tools/train.py logs after each epoch "
        "CheckpointManager.update's (lib/utils/misc.py) checkpoints ranked by top-1, the best first (best.pth.tar)",
        None),
    "logit-standardization-KD README": Source(
        "logit-standardization-KD README", "github.com/sunshangquan/logit-standardization-KD README.md, 'Results "
        "and Logs', tables 1 (identical structures) and 2 (distinct)", "best",
        "its mdistiller/engine/trainer.py ends a run with best_acc, as its logs/ do; the README's numbers are averages "
        "('Due to average operation and randomness') of runs it does not count", None),
    "TTM README": Source(
        "TTM README", "github.com/zkxufo/TTM README.md, 'Benchmark Results on CIFAR-100', tables 1 (same "
        "architectural type) and 2 (different)", "best",
        "the README does not say; its train_student.py (RepDistiller's, otherwise) keeps best_acc and ends each log "
        "with 'best: '", None),
    "CTKD README": Source(
        "CTKD README", "github.com/zhengli97/CTKD README.md, 'Main Results', 'On CIFAR-100' (its +CTKD row)", "best",
        "its train_student.py keeps best_acc over the epochs and writes it to test_best_metrics.json, saving the best "
        "epoch's model", None),
    "SDD README": Source(
        "SDD README", "github.com/shicaiwei123/SDD-CVPR2024 README.md, 'Main result', 'On CIFAR100' (its image "
        "cifar100.png, rows SD-KD and SD-DKD)", "best",
        "its train_origin.py trains with mdistiller's BaseTrainer (mdistiller/engine/trainer.py), which keeps and "
        "ends with best_acc", None),
    "overhaul-distillation README": Source(
        "overhaul-distillation README", "github.com/clovaai/overhaul-distillation README.md, 'CIFAR-100', "
        "'Experimental results' (error rates; top-1 = 100 - error)", "last",
        "CIFAR-100/train_with_distillation.py prints each epoch's test accuracy and keeps no best", None,
        epochs=200, batch_size=128),
    # ImageNet (ILSVRC 2012 validation top-1)
    "mdistiller README (ImageNet)": Source(
        "mdistiller README (ImageNet)", "github.com/megvii-research/mdistiller README.md, 'On ImageNet' under 'DOT: A "
        "Distillation-Oriented Trainer' (KD, KD+DOT) and under 'Decoupled Knowledge Distillation' (KD, DKD)", "best",
        "mdistiller/engine/trainer.py ends a run with its best_acc (the best epoch's validation accuracy)", None,
        data="ImageNet", epochs=100, batch_size=512),  # configs/imagenet/*/{kd,dkd,dot}.yaml: batch 512
    "DIST README (ImageNet)": Source(
        "DIST README (ImageNet)", "github.com/hunto/DIST_KD README.md, 'Reproducing our results', 'ImageNet', "
        "'Baseline settings' (CONFIG=configs/strategies/distill/resnet_dist.yaml, 8 GPUs) and 'Stronger teachers' "
        "(which names no config: the baseline settings', as far as the README says)",
        "best", "its classification/ (hunto/image_classification_sota) tools/train.py keeps the checkpoints ranked by "
        "top-1, the best first (lib/utils/misc.py CheckpointManager)", None,
        data="ImageNet", epochs=100, batch_size=256),  # resnet_dist.yaml batch_size 32 x 8 GPUs, epochs 100
    "torchdistill benchmarks": Source(
        "torchdistill benchmarks", "github.com/yoshitomo-matsubara/torchdistill docs/source/benchmarks.rst, 'ImageNet "
        "(ILSVRC 2012)' (docs/source/_static/benchmarks/imagenet-resnet18_kd.tsv), its 'torchdistill' column: its "
        "own re-runs", "best", "examples/torchvision/image_classification.py saves the student at its best "
        "validation top-1 and tests that checkpoint at the end", None,
        data="ImageNet", epochs=100, batch_size=None),  # its configs' batch differs (and 1 or 3 GPUs)
    "torchdistill benchmarks (original work)": Source(
        "torchdistill benchmarks (original work)", "github.com/yoshitomo-matsubara/torchdistill "
        "docs/source/benchmarks.rst, 'ImageNet (ILSVRC 2012)', its 'Original work' column (each method's paper)",
        "best", "torchdistill does not say; each number is its paper's own", None,
        data="ImageNet", epochs=None, batch_size=None),
}


@dataclasses.dataclass(frozen=True)
class Published:
    teacher: str | None  # None: trained without a teacher
    student: str
    method: str
    saliencymix: bool
    top1: float
    source: str  # a key of SOURCES
    cifar100c: float | None = None  # the mean CIFAR-100-C top-1, where the source gives one
    std: float | None = None  # the standard deviation over runs, where the source gives top1 as a mean ± std

    @property
    def scoring(self) -> str:
        return SOURCES[self.source].scoring


# RepDistiller README, table 1 (same architectural type) and table 2 (different), header order.
REPDISTILLER_PAIRS_SAME = [("wideresnet40_2", "wideresnet16_2"), ("wideresnet40_2", "wideresnet40_1"),
                           ("rd_resnet56", "rd_resnet20"), ("rd_resnet110", "rd_resnet20"),
                           ("rd_resnet110", "rd_resnet32"), ("rd_resnet32x4", "rd_resnet8x4"), ("vgg13", "vgg8")]
REPDISTILLER_TEACHER_STUDENT_SAME = [(75.61, 73.26), (75.61, 71.98), (72.34, 69.06), (74.31, 69.06), (74.31, 71.14),
                                     (79.42, 72.50), (74.64, 70.36)]
REPDISTILLER_TABLE_SAME = {
    "kd": [74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98],
    "fitnet": [73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02],
    "at": [74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43],
    "sp": [73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68],
    "cc": [73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71],
    "vid": [74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23],
    "rkd": [73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48],
    "pkt": [74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88],
    "ab": [72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94],
    "ft": [73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58],
    "fsp": [72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23],  # N/A in the README
    "nst": [73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53],
    "crd": [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94],
}
REPDISTILLER_PAIRS_DIFFERENT = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
                                ("rd_resnet32x4", "ShuffleV1"), ("rd_resnet32x4", "ShuffleV2"),
                                ("wideresnet40_2", "ShuffleV1")]
REPDISTILLER_TEACHER_STUDENT_DIFFERENT = [(74.64, 64.60), (79.34, 64.60), (79.34, 70.36), (79.42, 70.50),
                                          (79.42, 71.82), (75.61, 70.50)]
REPDISTILLER_TABLE_DIFFERENT = {
    "kd": [67.37, 67.35, 73.81, 74.07, 74.45, 74.83],
    "fitnet": [64.14, 63.16, 70.69, 73.59, 73.54, 73.73],
    "at": [59.40, 58.58, 71.84, 71.73, 72.73, 73.32],
    "sp": [66.30, 68.08, 73.34, 73.48, 74.56, 74.52],
    "cc": [64.86, 65.43, 70.25, 71.14, 71.29, 71.38],
    "vid": [65.56, 67.57, 70.30, 73.38, 73.40, 73.61],
    "rkd": [64.52, 64.43, 71.50, 72.28, 73.21, 72.21],
    "pkt": [67.13, 66.52, 73.01, 74.10, 74.69, 73.89],
    "ab": [66.06, 67.20, 70.65, 73.55, 74.31, 73.34],
    "ft": [61.78, 60.99, 70.29, 71.75, 72.50, 72.03],
    "nst": [58.16, 64.96, 71.28, 74.12, 74.68, 74.89],
    "crd": [69.73, 69.11, 74.30, 75.11, 75.65, 76.05],
}

# mdistiller README, DKD's CIFAR-100 tables (its KD rows are RepDistiller's numbers, listed above once).
MDISTILLER_DKD_PAIRS = [("rd_resnet56", "rd_resnet20"), ("rd_resnet110", "rd_resnet32"),
                        ("rd_resnet32x4", "rd_resnet8x4"), ("wideresnet40_2", "wideresnet16_2"),
                        ("wideresnet40_2", "wideresnet40_1"), ("vgg13", "vgg8"), ("rd_resnet32x4", "ShuffleV1"),
                        ("wideresnet40_2", "ShuffleV1"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"),
                        ("rd_resnet32x4", "ShuffleV2")]
# The last column's header reads "ResNet32x4 / MobileNet-V2", but its KD cell (74.45) is RepDistiller's resnet32x4 ->
# ShuffleNetV2 number and mdistiller's configs/cifar100/dkd/ holds res32x4_shuv2.yaml and no res32x4 -> MobileNetV2:
# the column is ShuffleV2.
MDISTILLER_DKD = [71.97, 74.11, 76.32, 76.23, 74.81, 74.68, 76.45, 76.70, 69.71, 70.35, 77.07]

# mdistiller README, DOT's CIFAR-100 table (header ResNet32x4/ResNet8x4, VGG13/VGG8, ResNet32x4/ShuffleNet-V2): its
# "KD+DOT" row, the report's `kd+dot` (configs/mdistiller.py's kd_dot); its KD row is RepDistiller's numbers.
MDISTILLER_DOT_PAIRS = [("rd_resnet32x4", "rd_resnet8x4"), ("vgg13", "vgg8"), ("rd_resnet32x4", "ShuffleV2")]
MDISTILLER_KD_DOT = [75.12, 73.77, 75.55]

# DIST README, the CIFAR-100 table (one row per pair: "Student (top-1) | Teacher (top-1) | DIST | ..."), as (mean,
# std). Its students' and teachers' own numbers are RepDistiller's (listed above once). MobileNetV2 is its
# `cifar_mobile_half`, RepDistiller's MobileNetV2.
DIST_PAIRS = [("wideresnet40_2", "wideresnet40_1"), ("rd_resnet56", "rd_resnet20"), ("rd_resnet32x4", "rd_resnet8x4"),
              ("ResNet50", "MobileNetV2"), ("rd_resnet32x4", "ShuffleV1"), ("rd_resnet32x4", "ShuffleV2")]
DIST = [(74.43, 0.24), (71.75, 0.30), (76.31, 0.19), (68.66, 0.23), (76.34, 0.18), (77.35, 0.25)]

# logit-standardization-KD README, table 1 (identical structures) and table 2 (distinct), header order; "Ours" is
# logit standardization (the report's `+ls`). Its KD and DKD rows quote RepDistiller's and mdistiller's numbers
# where those have the pair (the DKD cell for wrn_40_2 -> wrn_16_2 as 76.24, mdistiller's 76.23) and give others
# for pairs they lack; only numbers not already listed for the group are kept from those two rows. The per-pair
# settings are in its log names (`logs/KD/kd,vgg13,vgg8,3,9.txt`: base temperature 3, KD weight 9), not always
# the README's commands' 2 and 9: jaxkd/config/recipes.py's `KD_LS` and `DKD_LS` hold them.
LS_PAIRS_IDENTICAL = [("rd_resnet32x4", "rd_resnet8x4"), ("vgg13", "vgg8"), ("wideresnet40_2", "wideresnet40_1"),
                      ("wideresnet40_2", "wideresnet16_2"), ("rd_resnet56", "rd_resnet20"),
                      ("rd_resnet110", "rd_resnet32"), ("rd_resnet110", "rd_resnet20")]
LS_TABLE_IDENTICAL = {
    "kd": [73.33, 72.98, 73.54, 74.92, 70.66, 73.08, 70.67],
    "kd+ls": [76.62, 74.36, 74.37, 76.11, 71.43, 74.17, 71.48],
    "dkd": [76.32, 74.68, 74.81, 76.24, 71.97, 74.11, 71.06],
    "dkd+ls": [77.01, 74.81, 74.89, 76.39, 72.32, 74.29, 71.85],
}
# SHN-V2 is ShuffleV2, MN-V2 MobileNetV2 (its log names: `kd,resnet32x4,ShuffleV2,2,9.txt`)
LS_PAIRS_DISTINCT = [("rd_resnet32x4", "ShuffleV2"), ("rd_resnet32x4", "wideresnet16_2"),
                     ("rd_resnet32x4", "wideresnet40_2"), ("wideresnet40_2", "rd_resnet8x4"),
                     ("wideresnet40_2", "MobileNetV2"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2")]
LS_TABLE_DISTINCT = {
    "kd": [74.45, 74.90, 77.70, 73.97, 68.36, 67.37, 67.35],
    "kd+ls": [75.56, 75.26, 77.92, 77.11, 69.23, 68.61, 69.02],
    "dkd": [77.07, 75.70, 78.46, 75.56, 69.28, 69.71, 70.35],
    "dkd+ls": [77.37, 76.19, 78.95, 76.75, 70.01, 69.98, 70.45],
}
LS_QUOTED_ROWS = ("kd", "dkd")

# TTM README, the WTTM rows of its tables 1 and 2, whose pairs and order are RepDistiller's tables' (its other rows
# quote RepDistiller's, DIST's and DKD's numbers or its reimplementations of them; its TTM row is a method jaxkd does
# not implement).
WTTM_SAME = [76.37, 74.58, 71.92, 71.67, 74.13, 76.06, 74.44]
WTTM_DIFFERENT = [69.16, 69.59, 74.82, 74.37, 76.55, 75.42]

# NKD: neither yzd-v/cls_KD's README nor its nkd.md has a CIFAR-100 table (their tables are ImageNet's).

# CTKD README, 'On CIFAR-100' (header order; the "+CTKD" row is KD with CTKD's learned temperature, the report's
# `kd+ctkd`). Its KD row quotes RepDistiller's numbers (70.66 for RN-110 -> RN-20, RepDistiller's 70.67), not kept.
CTKD_PAIRS = [("rd_resnet56", "rd_resnet20"), ("rd_resnet110", "rd_resnet32"), ("rd_resnet110", "rd_resnet20"),
              ("wideresnet40_2", "wideresnet16_2"), ("wideresnet40_2", "wideresnet40_1"), ("vgg13", "vgg8")]
CTKD_KD = [71.19, 73.52, 70.99, 75.45, 73.93, 73.52]

# OFD: the official clovaai/overhaul-distillation README, 'Experimental results' on CIFAR-100, as error rates (its
# "Proposed" column), with its own recipe (train_with_distillation.py: 200 epochs, batch 128, lr 0.1, Nesterov);
# its setups (a) WRN 28-4 -> WRN 16-4 and (c) WRN 28-4 -> WRN 16-2 are jaxkd's WRNs; (b)'s WRN 28-2, (d)'s ResNet 56
# (its own models/ResNet.py) and the PyramidNets are not jaxkd architectures. mdistiller's README has no OFD row.
OVERHAUL_PAIRS = [("wideresnet28_4", "wideresnet16_4"), ("wideresnet28_4", "wideresnet16_2")]
OVERHAUL_ERRORS = [20.89, 24.08]

# ReviewKD: neither dvlab-research/ReviewKD's READMEs (README.md, CIFAR-100/README.md) nor mdistiller's has a
# CIFAR-100 table; its numbers are its paper's (docs/methods.md), not listed here.

# SDD README, 'On CIFAR100' (cifar100.png), header order; "SD-KD" is SDD with the KD base (the report's `sdd`),
# "SD-DKD" with the DKD base (`sdd+dkd`), the bracketed gains over its KD and DKD rows left out; its KD, DKD and NKD
# rows are the baselines it compares with (RepDistiller's and mdistiller's numbers where those have the pair).
SDD_PAIRS = [("rd_resnet32x4", "ShuffleV1"), ("wideresnet40_2", "ShuffleV1"), ("ResNet50", "MobileNetV2"),
             ("vgg13", "MobileNetV2"), ("rd_resnet32x4", "ShuffleV2"), ("ResNet50", "vgg8")]
SDD_TABLE = {"sdd": [76.30, 76.65, 69.55, 68.79, 76.67, 74.89], "sdd+dkd": [77.30, 77.21, 71.36, 70.25, 78.05, 75.86]}
# CAT-KD: GzyAftermath/CAT-KD's README has no results table; its numbers are its paper's, not listed here.

# ------------------------------------------------------------------------------------------------ ImageNet
# mdistiller README, 'On ImageNet' (header "ResNet34 <br> ResNet18 | ResNet50 <br> MobileNet-V1"), in the DOT section
# (rows KD, KD+DOT) and the DKD section (rows KD, DKD; the same KD numbers). Its other ImageNet methods (AT, OFD, CRD,
# ReviewKD) have configs but no row in the README.
IMAGENET_PAIRS = [("tv_resnet34", "tv_resnet18"), ("tv_resnet50", "MobileNetV1")]
MDISTILLER_IMAGENET = {"kd": [71.03, 70.50], "dkd": [71.70, 72.05], "kd+dot": [71.72, 73.09]}

# DIST README, ImageNet 'Baseline settings' (one row per pair: Student | Teacher | DIST) and 'Stronger teachers'
# (Student | Teacher | KD (T=4) | DIST); the students' and teachers' own numbers in brackets are torchvision's
# released weights', not runs of this recipe (left out). The 'Stronger training strategies' table (dist_b2.yaml, a
# timm teacher) is another recipe and teacher, left out.
DIST_IMAGENET_BASELINE = [72.07, 73.24]  # IMAGENET_PAIRS' order
DIST_IMAGENET_STRONGER = [  # (teacher, student, KD (T=4), DIST)
    ("tv_resnet34", "tv_resnet18", 71.21, 72.07), ("tv_resnet50", "tv_resnet18", 71.35, 72.12),
    ("tv_resnet101", "tv_resnet18", 71.09, 72.08), ("tv_resnet152", "tv_resnet18", 71.12, 72.24),
    ("tv_resnet50", "tv_resnet34", 74.73, 75.06), ("tv_resnet101", "tv_resnet34", 74.89, 75.36),
    ("tv_resnet152", "tv_resnet34", 74.87, 75.42)]

# torchdistill's ImageNet table (imagenet-resnet18_kd.tsv: Method | Original work | torchdistill), ResNet-34 ->
# ResNet-18, by jaxkd's method names (its KR is ReviewKD, KD w/ LS the report's `kd+ls`; methods jaxkd does not
# implement keep torchdistill's short names); None: N/A in the table. Its "Pretrained" row (69.76) is torchvision's
# ResNet-18, not a run of its recipe (left out).
TORCHDISTILL_IMAGENET = {  # method: (original work, torchdistill)
    "kd": (None, 71.37), "at": (70.70, 70.90), "ft": (71.43, 71.56), "crd": (71.17, 70.93), "tfkd": (70.42, 70.52),
    "sskd": (71.62, 70.09), "l2": (70.90, 71.08), "pad_l2": (71.71, 71.71), "reviewkd": (71.61, 71.64),
    "ickd": (72.19, 68.34), "dist": (72.07, 71.95), "srd": (71.63, 71.92), "kd+ls": (71.42, 71.23),
    "dist_plus": (72.39, 71.37)}
# Original-work cells kept: those of methods jaxkd implements, less DIST's (its README's 72.07, listed above) and
# FT's (assessed on ILSVRC 2015 in its paper: the table's footnote **, not ILSVRC 2012).
TORCHDISTILL_ORIGINAL_KEPT = ("at", "crd", "reviewkd", "kd+ls")


# pytorch-kd README (the seed): 'Baseline Models' (the seed's pre-activation resnets) and 'Results on CIFAR100C'.
SEED_BASELINES = {"wideresnet40_2": 76.44, "wideresnet40_1": 71.91, "wideresnet28_4": 79.03,
                  "wideresnet16_4": 77.35, "wideresnet16_2": 74.03, "wideresnet16_1": 67.85, "resnet56": 72.55,
                  "resnet20": 69.51, "resnet8": 61.11}
SEED_CIFAR100C = {False: (76.44, 48.12), True: (78.26, 49.06)}  # WRN40-2, (clean, CIFAR-100-C), by SaliencyMix


def _repdistiller() -> list[Published]:
    found: dict[tuple, Published] = {}
    source = "RepDistiller README"
    for pairs, alone, table in ((REPDISTILLER_PAIRS_SAME, REPDISTILLER_TEACHER_STUDENT_SAME, REPDISTILLER_TABLE_SAME),
                                (REPDISTILLER_PAIRS_DIFFERENT, REPDISTILLER_TEACHER_STUDENT_DIFFERENT,
                                 REPDISTILLER_TABLE_DIFFERENT)):
        for (teacher, student), (teacher_top1, student_top1) in zip(pairs, alone):
            for arch, top1 in ((teacher, teacher_top1), (student, student_top1)):  # each trained alone
                found.setdefault((arch, "none"), Published(None, arch, "none", False, top1, source))
        for method, values in table.items():
            for (teacher, student), top1 in zip(pairs, values, strict=True):
                if top1 is not None:
                    found[(teacher, student, method)] = Published(teacher, student, method, False, top1, source)
    return list(found.values())


def _seed() -> list[Published]:
    source = "pytorch-kd README"
    rows = [Published(None, arch, "none", False, top1, source, SEED_CIFAR100C[False][1] if arch == "wideresnet40_2"
                      else None) for arch, top1 in SEED_BASELINES.items()]
    clean, corrupted = SEED_CIFAR100C[True]
    return rows + [Published(None, "wideresnet40_2", "none", True, clean, source, corrupted)]


def _mdistiller() -> list[Published]:
    return [Published(teacher, student, "dkd", False, top1, "mdistiller README")
            for (teacher, student), top1 in zip(MDISTILLER_DKD_PAIRS, MDISTILLER_DKD, strict=True)] + [
        Published(teacher, student, "kd+dot", False, top1, "mdistiller README (DOT)")
        for (teacher, student), top1 in zip(MDISTILLER_DOT_PAIRS, MDISTILLER_KD_DOT, strict=True)]


def _dist() -> list[Published]:
    return [Published(teacher, student, "dist", False, top1, "DIST README", std=std)
            for (teacher, student), (top1, std) in zip(DIST_PAIRS, DIST, strict=True)]


def _wttm() -> list[Published]:
    return [Published(teacher, student, "wttm", False, top1, "TTM README")
            for pairs, values in ((REPDISTILLER_PAIRS_SAME, WTTM_SAME), (REPDISTILLER_PAIRS_DIFFERENT, WTTM_DIFFERENT))
            for (teacher, student), top1 in zip(pairs, values, strict=True)]


def _ctkd() -> list[Published]:
    return [Published(teacher, student, "kd+ctkd", False, top1, "CTKD README")
            for (teacher, student), top1 in zip(CTKD_PAIRS, CTKD_KD, strict=True)]


def _sdd() -> list[Published]:
    return [Published(teacher, student, method, False, top1, "SDD README")
            for method, values in SDD_TABLE.items() for (teacher, student), top1 in zip(SDD_PAIRS, values, strict=True)]


def _overhaul() -> list[Published]:
    return [Published(teacher, student, "ofd", False, round(100.0 - error, 2), "overhaul-distillation README")
            for (teacher, student), error in zip(OVERHAUL_PAIRS, OVERHAUL_ERRORS, strict=True)]


def _logit_standardization(listed: list[Published]) -> list[Published]:
    """Its tables' cells, less the KD and DKD cells that repeat a number `listed` already has for the group."""
    known = {(p.teacher, p.student, p.method, p.top1) for p in listed}
    rows = []
    for pairs, table in ((LS_PAIRS_IDENTICAL, LS_TABLE_IDENTICAL), (LS_PAIRS_DISTINCT, LS_TABLE_DISTINCT)):
        for method, values in table.items():
            for (teacher, student), top1 in zip(pairs, values, strict=True):
                if method not in LS_QUOTED_ROWS or (teacher, student, method, top1) not in known:
                    rows.append(Published(teacher, student, method, False, top1, "logit-standardization-KD README"))
    return rows


def _imagenet() -> list[Published]:
    """mdistiller's, DIST's and torchdistill's ImageNet tables."""
    rows = [Published(teacher, student, method, False, top1, "mdistiller README (ImageNet)")
            for method, values in MDISTILLER_IMAGENET.items()
            for (teacher, student), top1 in zip(IMAGENET_PAIRS, values, strict=True)]
    rows += [Published(teacher, student, "dist", False, top1, "DIST README (ImageNet)")
             for (teacher, student), top1 in zip(IMAGENET_PAIRS, DIST_IMAGENET_BASELINE, strict=True)]
    for teacher, student, kd, dist in DIST_IMAGENET_STRONGER:
        rows.append(Published(teacher, student, "kd", False, kd, "DIST README (ImageNet)"))
        if (teacher, student, "dist", dist) not in {(p.teacher, p.student, p.method, p.top1) for p in rows}:
            rows.append(Published(teacher, student, "dist", False, dist, "DIST README (ImageNet)"))
    teacher, student = IMAGENET_PAIRS[0]
    for method, (original, rerun) in TORCHDISTILL_IMAGENET.items():
        rows.append(Published(teacher, student, method, False, rerun, "torchdistill benchmarks"))
        if method in TORCHDISTILL_ORIGINAL_KEPT:
            rows.append(Published(teacher, student, method, False, original, "torchdistill benchmarks (original work)"))
    return rows


def _all() -> list[Published]:
    listed = [*_repdistiller(), *_seed(), *_mdistiller(), *_dist(), *_wttm(), *_ctkd(), *_sdd(), *_overhaul()]
    return listed + _logit_standardization(listed) + _imagenet()


PUBLISHED: list[Published] = _all()


def published_for(teacher: str | None, student: str, method: str, saliencymix: bool) -> list[Published]:
    """Every published number for one group (teacher None: trained alone)."""
    return [p for p in PUBLISHED
            if (p.teacher, p.student, p.method, p.saliencymix) == (teacher, student, method, saliencymix)]
