"""The recipe table (jaxkd/config/recipes.py) against the references' published settings, each value read off the
upstream file and line named beside it, and what reads the table: the configs that are its views, the command
line, the method sections, the report's labels and the benchmark.

Upstream commits read: HobbitLong/RepDistiller b84f547, megvii-research/mdistiller a08d46f,
sunshangquan/logit-standardization-KD (README.md), dvlab-research/ReviewKD (CIFAR-100/script/reviewKD.sh),
hunto/image_classification_sota (configs/strategies/distill/dist_cifar.yaml, lib/models/losses/kd_loss.py),
yzd-v/cls_KD 1e5d48f (configs/distillers/cifar100/res34_distill_res18_cifar.py), zkxufo/TTM fe457b3 (README.md).
"""

import pytest

from jaxkd.config import recipes
from jaxkd.errors import UserError
from jaxkd.methods import METHODS, get_method
from jaxkd.tools import published
from jaxkd.tools.report import method_label
from jaxkd.train import main, parse_command_line

# ------------------------------------------------------------------------------------------ RepDistiller
# scripts/run_cifar_distill.sh: (-r, -a, -b) of each --distill line (-r defaults to 1, train_student.py:73)
RUN_CIFAR_DISTILL = {
    "kd": (0.1, 0.9, 0.0),  # :5
    "fitnet": (1.0, 0.0, 100.0),  # :7 (hint)
    "at": (1.0, 0.0, 1000.0),  # :9 (attention)
    "sp": (1.0, 0.0, 3000.0),  # :11 (similarity)
    "cc": (1.0, 0.0, 0.02),  # :13 (correlation)
    "vid": (1.0, 0.0, 1.0),  # :15
    "rkd": (1.0, 0.0, 1.0),  # :17
    "pkt": (1.0, 0.0, 30000.0),  # :19
    "ab": (1.0, 0.0, 1.0),  # :21 (abound)
    "ft": (1.0, 0.0, 200.0),  # :23 (factor)
    "fsp": (1.0, 0.0, 50.0),  # :25
    "nst": (1.0, 0.0, 50.0),  # :27
    "crd": (1.0, 0.0, 0.8),  # :29
    "crd_kd": (1.0, 1.0, 0.8),  # :32 (CRD+KD)
    "none": (1.0, 0.0, 0.0),  # the student alone: train_teacher.py's cross-entropy
}
# the settings of each method's criterion that its section holds
REPDISTILLER_SECTIONS = {
    # train_student.py:88 --hint_layer 2 indexes feat[], whose 0 is the stem: the 2nd stage's output, jaxkd's 1
    "fitnet": {"hint_layer": 1},
    "at": {"p": 2},  # distiller_zoo/AT.py:11 Attention(p=2), train_student.py:200 Attention()
    # train_student.py:81 feat_dim 128, :83 nce_k 16384, :84 nce_t 0.07, :85 nce_m 0.5
    "crd": {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5},
    "cc": {"feat_dim": 128},  # train_student.py:213-214 LinearEmbed(..., opt.feat_dim)
    "vid": {"init_pred_var": 5.0, "eps": 1e-5},  # distiller_zoo/VID.py:16-17
    "rkd": {"distance_weight": 25.0, "angle_weight": 50.0},  # distiller_zoo/RKD.py:10 (w_d=25, w_a=50)
    "ab": {"margin": 1.0, "init_epochs": 30},  # distiller_zoo/AB.py:11; train_student.py:47 --init_epochs 30
    # distiller_zoo/FT.py:9 (p1=2, p2=1); models/util.py:9 Paraphraser k=0.5; train_student.py:47
    "ft": {"p1": 2.0, "p2": 1.0, "rate": 0.5, "init_epochs": 30},
    "fsp": {"init_epochs": 30},  # train_student.py:47
}
# train_student.py: :44 batch 64, :46 240 epochs, :50 lr 0.05, :51 decay at 150,180,210, :52 x0.1, :53 weight
# decay 5e-4, :54 momentum 0.9; :93-94 lr 0.01 for MobileNetV2, ShuffleV1, ShuffleV2 students; :78 kd_T 4. The
# data pipeline and lr timing are jaxkd's `repdistiller` settings (jaxkd/config/default.py repdistiller_recipe).
REPDISTILLER_TRAINING = {"epochs": 240, "batch_size": 64, "lr_decay_epochs": (150, 180, 210), "lr_decay_rate": 0.1,
                         "weight_decay": 5e-4, "momentum": 0.9, "lr_decay_timing": "repdistiller",
                         "padding": "zeros", "normalization": "repdistiller", "drop_last": False}
LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def training(config) -> dict:
    return {"epochs": config.epochs, "batch_size": config.batch_size,
            "lr_decay_epochs": tuple(config.optimizer.lr_decay_epochs),
            "lr_decay_rate": config.optimizer.lr_decay_rate, "weight_decay": config.optimizer.weight_decay,
            "momentum": config.optimizer.momentum, "lr_decay_timing": config.optimizer.lr_decay_timing,
            "padding": config.data.padding, "normalization": config.data.normalization,
            "drop_last": config.data.drop_last}


def lr(student: str) -> float:
    return 0.01 if student in LOW_LR_STUDENTS else 0.05


def section(config, method: str, keys) -> dict:
    return {key: config[method][key] for key in keys}


REPDISTILLER_PAIRS = [(recipes.repdistiller_name(t), recipes.repdistiller_name(s))
                      for t, s in published.REPDISTILLER_PAIRS_SAME + published.REPDISTILLER_PAIRS_DIFFERENT]


@pytest.mark.parametrize("teacher, student", REPDISTILLER_PAIRS)
def test_repdistiller_entries_are_its_published_settings(teacher, student):
    assert set(recipes.REPDISTILLER_WEIGHTS) == set(RUN_CIFAR_DISTILL)
    for method, weights in RUN_CIFAR_DISTILL.items():
        config = recipes.repdistiller(teacher, student, method)
        assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == weights, method
        assert config.loss.kd_temperature == 4.0 and not config.loss.logit_standardization
        assert config.method == method.removesuffix("_kd")
        assert training(config) == REPDISTILLER_TRAINING and config.optimizer.lr == lr(student)
        if config.method in REPDISTILLER_SECTIONS:
            expected = REPDISTILLER_SECTIONS[config.method]
            assert section(config, config.method, expected) == expected, method
        if method == "none":
            assert not config.teacher.arch and not config.teacher.checkpoint
        else:  # scripts/fetch_pretrained_teachers.sh:3-9: save/models/<T>_vanilla/ckpt_epoch_240.pth
            assert config.teacher.checkpoint == f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"
            # models/__init__.py's resnet{n} are RepDistiller's post-activation resnets, jaxkd's rd_resnet{n}
            assert config.teacher.arch.startswith("rd_") == teacher.startswith("resnet")
            assert recipes.repdistiller_name(config.teacher.arch) == teacher
    assert config.model.startswith("rd_") == student.startswith("resnet")
    assert recipes.repdistiller_name(config.model) == student


# --------------------------------------------------------------------------------------------- mdistiller
# configs/cifar100/dkd/*.yaml:19 DKD.BETA where a pair's file sets it, else mdistiller/engine/cfg.py:165's 8
DKD_BETA = {("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("vgg13", "MobileNetV2"): 6.0,
            ("vgg13", "vgg8"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
            ("resnet32x4", "resnet8x4"): 8.0, ("resnet32x4", "ShuffleV1"): 8.0, ("resnet32x4", "ShuffleV2"): 8.0,
            ("ResNet50", "MobileNetV2"): 8.0, ("wrn_40_2", "ShuffleV1"): 8.0}
# dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh --kd-loss-weight (:1, :3, :5, :7, :9 5.0; :11 8.0; :13 0.6;
# :15 1.0); mdistiller configs/cifar100/reviewkd.yaml:10 REVIEWKD_WEIGHT 5.0 for its resnet32x4 -> resnet8x4
REVIEWKD_WEIGHT = {("wrn_40_2", "wrn_16_2"): 5.0, ("wrn_40_2", "wrn_40_1"): 5.0, ("wrn_40_2", "ShuffleV1"): 5.0,
                   ("resnet32x4", "resnet8x4"): 5.0, ("resnet32x4", "ShuffleV1"): 5.0,
                   ("resnet32x4", "ShuffleV2"): 8.0, ("resnet56", "resnet20"): 0.6, ("resnet110", "resnet32"): 1.0}
# logit-standardization-KD README.md:90 and :103, the KD+Ours logs `logs/KD/kd,T,S,TEMP,WEIGHT.txt`
KD_LS = {("resnet32x4", "resnet8x4"): (2.0, 9.0), ("vgg13", "vgg8"): (3.0, 9.0), ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
         ("wrn_40_2", "wrn_16_2"): (2.0, 9.0), ("resnet56", "resnet20"): (2.0, 9.0),
         ("resnet110", "resnet32"): (2.0, 9.0), ("resnet110", "resnet20"): (4.0, 12.0),
         ("resnet32x4", "ShuffleV2"): (2.0, 9.0), ("resnet32x4", "wrn_16_2"): (3.0, 9.0),
         ("resnet32x4", "wrn_40_2"): (3.0, 9.0), ("wrn_40_2", "resnet8x4"): (2.0, 9.0),
         ("wrn_40_2", "MobileNetV2"): (3.0, 9.0), ("vgg13", "MobileNetV2"): (3.0, 9.0),
         ("ResNet50", "MobileNetV2"): (3.0, 1.0)}
# README.md:94 and :107, the DKD+Ours logs `logs/DKD/dkd,T,S,TEMP,WEIGHT[,BETA].txt` (no BETA: the pair's DKD_BETA)
DKD_LS = {("resnet32x4", "resnet8x4"): (2.0, 9.0, None), ("vgg13", "vgg8"): (2.0, 15.0, 2.0),
          ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0), ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0),
          ("resnet56", "resnet20"): (3.0, 18.0, 2.0), ("resnet110", "resnet32"): (2.0, 15.0, 2.0),
          ("resnet110", "resnet20"): (2.0, 15.0, 2.0), ("resnet32x4", "ShuffleV2"): (2.0, 9.0, None),
          ("resnet32x4", "wrn_16_2"): (2.0, 9.0, 2.0), ("resnet32x4", "wrn_40_2"): (2.0, 9.0, 8.0),
          ("wrn_40_2", "resnet8x4"): (2.0, 18.0, 2.0), ("wrn_40_2", "MobileNetV2"): (2.0, 15.0, 2.0),
          ("vgg13", "MobileNetV2"): (3.0, 9.0, 2.0), ("ResNet50", "MobileNetV2"): (2.0, 15.0, 2.0)}
MDISTILLER_PAIRS = sorted({*DKD_BETA, *REVIEWKD_WEIGHT, *KD_LS, *DKD_LS})


@pytest.mark.parametrize("teacher, student", MDISTILLER_PAIRS)
def test_mdistiller_entries_are_the_published_settings(teacher, student):
    entries = {method: recipes.mdistiller(teacher, student, method) for method in recipes.MDISTILLER_METHODS}
    for method, config in entries.items():
        # configs/cifar100/dkd/*.yaml:10-16 (batch 64, 240 epochs, lr 0.05 or :12 0.01 for the MobileNetV2 and
        # Shuffle students, decay at 150, 180, 210 by 0.1, weight decay 5e-4, momentum 0.9); engine/utils.py:72-78
        # decays after the stage's epoch, as RepDistiller; dataset/cifar100.py:120-123 RandomCrop(32, padding=4) and
        # RepDistiller's mean/std
        if method != "mlkd":  # MLKD's own training recipe: test_mlkd_entries_are_the_official_configs
            assert training(config) == REPDISTILLER_TRAINING and config.optimizer.lr == lr(student), method
        # models/cifar/__init__.py:22-44: download_ckpts/cifar_teachers/<T>_vanilla/ckpt_epoch_240.pth
        assert config.teacher.checkpoint == f"download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
        assert recipes.repdistiller_name(config.teacher.arch) == teacher
        assert recipes.repdistiller_name(config.model) == student
    beta = DKD_BETA.get((teacher, student), 8.0)
    dkd = entries["dkd"]  # engine/cfg.py:163-167: CE 1, alpha 1, beta 8, T 4, warm-up 20
    assert (dkd.method, dkd.loss.gamma, dkd.loss.alpha, dkd.loss.beta) == ("dkd", 1.0, 0.0, 1.0)
    assert dict(dkd.dkd) == {"alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup": 20}
    assert not dkd.loss.logit_standardization
    dist = entries["dist"]  # dist_cifar.yaml:34-36 ori 1, kd 2, dist_t4; kd_loss.py:71 DIST(beta=1, gamma=1, tau)
    assert (dist.method, dist.loss.gamma, dist.loss.alpha, dist.loss.beta) == ("dist", 1.0, 0.0, 2.0)
    assert dict(dist.dist) == {"beta": 1.0, "gamma": 1.0, "tau": 4.0}
    reviewkd = entries["reviewkd"]  # engine/cfg.py:151 CE 1, :153 warm-up 20, :158 max mid 512, :159 STU_PREACT
    assert (reviewkd.method, reviewkd.loss.gamma, reviewkd.loss.alpha) == ("reviewkd", 1.0, 0.0)
    assert reviewkd.loss.beta == REVIEWKD_WEIGHT.get((teacher, student), 5.0)
    assert section(reviewkd, "reviewkd", ("warmup", "student_preact", "max_mid_channels")) == {
        "warmup": 20, "student_preact": False, "max_mid_channels": 512}
    kdsvd = entries["kdsvd"]  # engine/cfg.py:94 K 1, :96 CE 1, :97 FEAT_WEIGHT 1
    assert (kdsvd.method, kdsvd.loss.gamma, kdsvd.loss.alpha, kdsvd.loss.beta, kdsvd.kdsvd.k) == \
        ("kdsvd", 1.0, 0.0, 1.0, 1)
    ofd = entries["ofd"]  # engine/cfg.py:102 CE 1, :103 FEAT_WEIGHT 0.001, :105 CONNECTOR.KERNEL_SIZE 1
    assert (ofd.method, ofd.loss.gamma, ofd.loss.alpha, ofd.loss.beta) == ("ofd", 1.0, 0.0, 0.001)
    assert dict(ofd.ofd) == {"connector_kernel_size": 1, "teacher_train_mode": True}  # OFD.train: teacher too
    # logit standardization: tools/train.py --logit-stand --base-temp 2 --kd-weight 9 (README.md:57, :66) unless the
    # pair's log names others; KD's CE weight is mdistiller's 0.1 (engine/cfg.py:63)
    temperature, weight = KD_LS.get((teacher, student), (2.0, 9.0))
    kd_ls = entries["kd_ls"]
    assert (kd_ls.method, kd_ls.loss.gamma, kd_ls.loss.alpha, kd_ls.loss.beta, kd_ls.loss.kd_temperature) == \
        ("kd", 0.1, weight, 0.0, temperature)
    assert kd_ls.loss.logit_standardization
    temperature, weight, logged_beta = DKD_LS.get((teacher, student), (2.0, 9.0, None))
    dkd_ls = entries["dkd_ls"]  # --kd-weight multiplies DKD's alpha and beta
    assert (dkd_ls.method, dkd_ls.loss.gamma, dkd_ls.loss.alpha, dkd_ls.loss.beta) == ("dkd", 1.0, 0.0, 1.0)
    assert dict(dkd_ls.dkd) == {"alpha": weight, "beta": weight * (beta if logged_beta is None else logged_beta),
                                "temperature": temperature, "warmup": 20}
    assert dkd_ls.loss.logit_standardization  # one home for every logit method
    # yzd-v/cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: NKDLoss(temp=3.0, gamma=3.5) beside the
    # student's loss (distiller.py: `ori_loss` and `loss_nkd`, both weight 1)
    nkd = entries["nkd"]
    assert (nkd.method, nkd.loss.gamma, nkd.loss.alpha, nkd.loss.beta) == ("nkd", 1.0, 0.0, 1.0)
    assert dict(nkd.nkd) == {"temperature": 3.0, "gamma": 3.5}
    # zkxufo/TTM README.md's WTTM command (`--add wttm --ttm_l 0.2 ... -a 4`): exponent 0.2, weight 4, CE 1 (-r 1)
    wttm = entries["wttm"]
    assert (wttm.method, wttm.loss.gamma, wttm.loss.alpha, wttm.loss.beta) == ("wttm", 1.0, 0.0, 4.0)
    assert dict(wttm.wttm) == {"exponent": 0.2}
    assert not nkd.loss.logit_standardization and not wttm.loss.logit_standardization
    # DOT: configs/cifar100/dot/*.yaml: TRAINER "dot", DOT.DELTA 0.075, KD with CFG.KD (engine/cfg.py:61-64: T 4, CE
    # 0.1, KD 0.9); DKD + DOT (no mdistiller config): the DKD entry under the same trainer and delta
    kd_dot, dkd_dot = entries["kd_dot"], entries["dkd_dot"]
    assert (kd_dot.method, kd_dot.loss.gamma, kd_dot.loss.alpha, kd_dot.loss.beta, kd_dot.loss.kd_temperature) == \
        ("kd", 0.1, 0.9, 0.0, 4.0)
    assert not kd_dot.loss.logit_standardization
    assert [(entries[m].optimizer.dot, entries[m].optimizer.dot_delta) for m in ("kd_dot", "dkd_dot")] == [
        (True, 0.075)] * 2
    assert not any(config.optimizer.dot for method, config in entries.items() if not method.endswith("_dot"))
    dkd_dot.optimizer.dot = False
    assert dkd_dot.to_dict() == dkd.to_dict()


# --------------------------------------------------------------------------------- what reads the table
@pytest.mark.parametrize("config_file, method", [("kd_wrn", "kd"), ("fitnet_wrn", "fitnet"), ("at_wrn", "at"),
                                                 ("crd_wrn", "crd"), ("crd_kd_wrn", "crd_kd")])
def test_the_wrn_configs_are_the_tables_entry_with_the_teacher_file_left_to_the_command_line(config_file, method):
    flags_ = parse_command_line(["train", "--config", f"configs/{config_file}.py", "--workdir", "unused"])
    expected = recipes.repdistiller("wrn_40_2", "wrn_16_2", method, teacher_checkpoint="")
    assert flags_.config.to_dict() == expected.to_dict()


def test_the_command_line_takes_the_triple_and_refuses_a_bad_one(capsys):
    flags_ = parse_command_line(["train", "--config", "configs/repdistiller.py:resnet32x4,ShuffleV1,crd",
                                 "--workdir", "unused", "--config.seed=3"])
    assert flags_.config.to_dict() == dict(recipes.repdistiller("resnet32x4", "ShuffleV1", "crd").to_dict(), seed=3)
    flags_ = parse_command_line(["train", "--config", "configs/mdistiller.py:wrn_40_2,wrn_16_2,dkd_ls",
                                 "--workdir", "unused"])
    assert flags_.config.to_dict() == recipes.mdistiller("wrn_40_2", "wrn_16_2", "dkd_ls").to_dict()
    with pytest.raises(UserError, match="method 'dkd' is not one of none, kd, fitnet"):
        parse_command_line(["train", "--config", "configs/repdistiller.py:resnet32x4,resnet8x4,dkd",
                            "--workdir", "unused"])
    with pytest.raises(UserError, match="method 'crd' is not one of dkd, dist"):
        parse_command_line(["train", "--config", "configs/mdistiller.py:resnet32x4,resnet8x4,crd",
                            "--workdir", "unused"])
    assert main(["train", "--config", "configs/repdistiller.py:resnet32x4", "--workdir", "unused"]) == 2
    assert "takes TEACHER,STUDENT,METHOD" in capsys.readouterr().err


def test_methods_read_the_sections_the_table_writes():
    for config in (recipes.mdistiller("resnet32x4", "resnet8x4", "dkd_ls"),
                   recipes.repdistiller("wrn_40_2", "wrn_16_2", "ft"), recipes.byot(), recipes.dml()):
        assert get_method(config.method, config).settings == dict(config[config.method])


def test_every_method_has_a_recipe_for_the_benchmark():
    for method in METHODS:
        name, config = recipes.method_recipe(method)
        assert config.method == method and name.startswith("configs/"), method
    assert recipes.method_recipe("crd")[1].loss.alpha == 0.0  # CRD's own entry, not CRD + KD's
    assert recipes.method_recipe("not_a_method") is None


def test_report_labels_the_standardized_runs_apart():
    """jaxkd.tools.report groups runs by method label: KD + LS and DKD + LS are rows of their own."""
    labels = {m: method_label(recipes.mdistiller("resnet32x4", "resnet8x4", m).to_dict())
              for m in ("dkd", "dist", "reviewkd", "kd_ls", "dkd_ls", "kd_dot", "dkd_dot")}
    assert labels == {"dkd": "dkd", "dist": "dist", "reviewkd": "reviewkd", "kd_ls": "kd+ls", "dkd_ls": "dkd+ls",
                      "kd_dot": "kd+dot", "dkd_dot": "dkd+dot"}
    # mdistiller README, DOT, 'On CIFAR-100': "| **KD+DOT** | **75.12** | **73.77** | **75.55** |"
    assert [(p.top1, p.source) for p in published.published_for("rd_resnet32x4", "rd_resnet8x4", "kd+dot", False)] == [
        (75.12, "mdistiller README (DOT)")]
    assert [p.top1 for p in published.published_for("vgg13", "vgg8", "kd+dot", False)] == [73.77]
    assert [p.top1 for p in published.published_for("rd_resnet32x4", "ShuffleV2", "kd+dot", False)] == [75.55]


# Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml: (teacher, student) -> (SOLVER.EPOCHS, SOLVER.LR)
MLKD_CONFIGS = {("resnet110", "resnet32"): (240, 0.025), ("resnet32x4", "resnet8x4"): (240, 0.025),
                ("resnet32x4", "ShuffleV1"): (960, 0.01), ("resnet32x4", "ShuffleV2"): (960, 0.01),
                ("ResNet50", "MobileNetV2"): (480, 0.01), ("resnet56", "resnet20"): (240, 0.025),
                ("vgg13", "MobileNetV2"): (480, 0.01), ("vgg13", "vgg8"): (240, 0.025),
                ("wrn_40_2", "ShuffleV1"): (480, 0.01), ("wrn_40_2", "wrn_16_2"): (240, 0.025),
                ("wrn_40_2", "wrn_40_1"): (240, 0.025)}


@pytest.mark.parametrize("teacher, student", sorted(MLKD_CONFIGS))
def test_mlkd_entries_are_the_official_configs(teacher, student):
    """Each config's EPOCHS and LR (BATCH_SIZE 64, LR_DECAY_STAGES [150, 180, 210], rate 0.1, WEIGHT_DECAY 5e-4,
    MOMENTUM 0.9 in all); KD_ours reads CFG.KD (engine/cfg.py:61-64): T 4, CE 0.1 (on each view), KD 0.9."""
    epochs, learning_rate = MLKD_CONFIGS[(teacher, student)]
    config = recipes.mdistiller(teacher, student, "mlkd")
    assert training(config) == {**REPDISTILLER_TRAINING, "epochs": epochs} and config.optimizer.lr == learning_rate
    assert (config.method, config.loss.gamma, config.loss.alpha, config.loss.beta) == ("mlkd", 0.1, 0.0, 1.0)
    assert dict(config.mlkd) == {"temperature": 4.0, "weight": 0.9, "strong_ce_weight": 0.1}
    assert not config.loss.logit_standardization and config.data.padding == "zeros"
