"""configs/imagenet.py (jaxkd/config/recipes.py `imagenet`) against the upstream ImageNet settings, each value read
off the file and line named beside it; the data section is left to the streaming input path (not a config key yet),
so only the training, method and loss parts are checked.

Upstream commits read: megvii-research/mdistiller a08d46f (configs/imagenet/{r34_r18,r50_mv1}/*.yaml,
mdistiller/engine/cfg.py, mdistiller/engine/utils.py), hunto/image_classification_sota 6f7a70a
(configs/strategies/distill/resnet_dist.yaml, lib/models/losses/kd_loss.py, lib/utils/args.py), hunto/DIST_KD 2418f18
(README.md), sunshangquan/logit-standardization-KD f6e5aa5 (README.md, configs/imagenet/r34_r18/kd.yaml,
tools/train.py).
"""

import pytest

from configs import imagenet
from jaxkd.config import recipes
from jaxkd.config.checks import check_run_config
from jaxkd.engine.optimizer import base_learning_rate
from jaxkd.errors import UserError
from jaxkd.methods import METHODS, get_method
from jaxkd.tools.report import method_label
from jaxkd.train import parse_command_line

PAIRS = {"r34_r18": ("tv_resnet34", "tv_resnet18"), "r50_mv1": ("tv_resnet50", "MobileNetV1")}
# every configs/imagenet/*/*.yaml SOLVER: :16 EPOCHS 100, :18 LR_DECAY_STAGES [30, 60, 90], :19 LR_DECAY_RATE 0.1,
# :20 WEIGHT_DECAY 0.0001, :21 MOMENTUM 0.9, :22 TYPE SGD; engine/utils.py:72-78 adjust_learning_rate decays from the
# epoch after each stage (jaxkd's "repdistiller" timing)
TRAINING = {"epochs": 100, "lr_decay_epochs": (30, 60, 90), "lr_decay_rate": 0.1, "weight_decay": 1e-4,
            "momentum": 0.9, "lr_decay_timing": "repdistiller"}
# SOLVER.BATCH_SIZE and LR (lines 15 and 17 of each file): (batch, lr)
SOLVER = {
    "kd": (512, 0.2),  # {r34_r18,r50_mv1}/kd.yaml:15,17
    "at": (512, 0.2),  # */at.yaml:15,17
    "crd": (256, 0.1),  # */crd.yaml:15,17
    "reviewkd": (256, 0.1),  # */reviewkd.yaml:15,17
    "dkd": (512, 0.2),  # */dkd.yaml:15,17
    "ofd": (128, 0.05),  # r50_mv1/ofd.yaml:15,17
    "kd_dot": (512, 0.2),  # */dot.yaml:15,17
    # DIST_KD README.md:37 `tools/dist_train.sh 8` with resnet_dist.yaml:2 batch_size 32 (per GPU), :10 lr 0.1
    "dist": (256, 0.1),
    "kd_ls": (512, 0.2),  # logit-standardization-KD configs/imagenet/r34_r18/kd.yaml:15,17
}
# (loss.gamma, loss.alpha, loss.beta, loss.kd_temperature, loss.logit_standardization, the method's section)
EXPECTED = {
    # */kd.yaml:24 TEMPERATURE 1, :26 CE_WEIGHT 0.5, :27 KD_WEIGHT 0.5
    ("kd", "r34_r18"): (0.5, 0.5, 0.0, 1.0, False, None),
    ("kd", "r50_mv1"): (0.5, 0.5, 0.0, 1.0, False, None),
    # engine/cfg.py:68 P 2, :70 CE_WEIGHT 1, :71 FEAT_WEIGHT 1000 (the at.yaml files set no AT section)
    ("at", "r34_r18"): (1.0, 0.0, 1000.0, 4.0, False, {"p": 2}),
    ("at", "r50_mv1"): (1.0, 0.0, 1000.0, 4.0, False, {"p": 2}),
    # engine/cfg.py:138 FEAT.DIM 128, :142 CE 1, :143 FEAT_WEIGHT 0.8, :145 K 16384, :146 MOMENTUM 0.5, :147 T 0.07
    # (crd.yaml:26-27 STUDENT_DIM/TEACHER_DIM are the pair's feature widths, which jaxkd reads off the models)
    # and jaxkd's sharded banks (how it holds 1.28M rows; the same results as replicated ones)
    ("crd", "r34_r18"): (1.0, 0.0, 0.8, 4.0, False,
                         {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "bank_layout": "sharded"}),
    ("crd", "r50_mv1"): (1.0, 0.0, 0.8, 4.0, False,
                         {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "bank_layout": "sharded"}),
    # r34_r18/reviewkd.yaml:27 CE 1, :28 REVIEWKD_WEIGHT 1, :29 WARMUP_EPOCHS 1, :34 STU_PREACT True, MAX_MID_CHANNEL
    # cfg.py:158's 512; r50_mv1/reviewkd.yaml:27 CE 1, :28 weight 8, :29 warm-up 1, :34 MAX_MID_CHANNEL 256, :35 True
    ("reviewkd", "r34_r18"): (1.0, 0.0, 1.0, 4.0, False,
                              {"warmup": 1, "student_preact": True, "max_mid_channels": 512}),
    ("reviewkd", "r50_mv1"): (1.0, 0.0, 8.0, 4.0, False,
                              {"warmup": 1, "student_preact": True, "max_mid_channels": 256}),
    # r34_r18/dkd.yaml:27 CE 1, :28 BETA 0.5, :29 T 1, :30 WARMUP 1; r50_mv1/dkd.yaml:28 BETA 2; cfg.py:164 ALPHA 1
    ("dkd", "r34_r18"): (1.0, 0.0, 1.0, 4.0, False, {"alpha": 1.0, "beta": 0.5, "temperature": 1.0, "warmup": 1}),
    ("dkd", "r50_mv1"): (1.0, 0.0, 1.0, 4.0, False, {"alpha": 1.0, "beta": 2.0, "temperature": 1.0, "warmup": 1}),
    # r50_mv1/ofd.yaml:25 FEAT_WEIGHT 0.0001; cfg.py:102 CE 1, :105 CONNECTOR.KERNEL_SIZE 1; OFD.train: the
    # teacher in train mode
    ("ofd", "r50_mv1"): (1.0, 0.0, 0.0001, 4.0, False, {"connector_kernel_size": 1, "teacher_train_mode": True}),
    # */dot.yaml:27 TEMPERATURE 1, :29 CE 0.5, :30 KD 0.5 (the DOT trainer: :23, delta :25)
    ("kd_dot", "r34_r18"): (0.5, 0.5, 0.0, 1.0, False, None),
    ("kd_dot", "r50_mv1"): (0.5, 0.5, 0.0, 1.0, False, None),
    # resnet_dist.yaml:28 kd 'dist', :29 ori_loss_weight 1, :30 kd_loss_weight 2; kd_loss.py:67-68
    # DIST(beta=1, gamma=1, tau=1)
    ("dist", "r34_r18"): (1.0, 0.0, 2.0, 4.0, False, {"beta": 1.0, "gamma": 1.0, "tau": 1.0}),
    ("dist", "r50_mv1"): (1.0, 0.0, 2.0, 4.0, False, {"beta": 1.0, "gamma": 1.0, "tau": 1.0}),
    # logit-standardization-KD README.md:119 `--logit-stand --base-temp 2 --kd-weight 9` on its
    # configs/imagenet/r34_r18/kd.yaml (:26 CE_WEIGHT 1.0); tools/train.py:113-114 KD_WEIGHT, TEMPERATURE
    ("kd_ls", "r34_r18"): (1.0, 9.0, 0.0, 2.0, True, None),
}


@pytest.mark.parametrize("method, folder", sorted(EXPECTED))
def test_imagenet_entries_are_the_upstream_settings(method, folder):
    teacher, student = PAIRS[folder]
    config = imagenet.get_config(f"{teacher},{student},{method}")
    assert (config.teacher.arch, config.model) == (teacher, student)
    assert {key: config.optimizer[key] for key in TRAINING if key != "epochs"} | {"epochs": config.epochs} == TRAINING
    batch, lr = SOLVER[method]
    assert config.batch_size == batch
    assert base_learning_rate(config) == pytest.approx(lr, rel=1e-12)  # the file's LR at its batch
    # the same rule at any batch: lr 0.2 per 512 (mdistiller's files lower LR with BATCH_SIZE)
    assert (config.optimizer.lr_scaling, config.optimizer.lr, config.optimizer.lr_reference_batch) == (
        "linear", 0.2, 512)
    # Nesterov only for DIST: image_classification_sota lib/utils/args.py:50 --sgd-no-nesterov defaults False
    assert config.optimizer.nesterov == (method == "dist")
    # DOT: */dot.yaml:23 TRAINER "dot", :25 DOT.DELTA 0.09
    assert (config.optimizer.dot, config.optimizer.dot_delta) == ((True, 0.09) if method == "kd_dot" else
                                                                  (False, 0.075))
    gamma, alpha, beta, temperature, standardized, section = EXPECTED[(method, folder)]
    loss = config.loss
    assert (loss.gamma, loss.alpha, loss.beta, loss.kd_temperature, loss.logit_standardization) == (
        gamma, alpha, beta, temperature, standardized)
    if section is None:
        assert config.method == "kd"
    else:
        # the upstream values; any other key of the section (CRD's chunk_elements: how jaxkd computes) its default
        assert config.method == method and dict(config[method]) == METHODS[method].defaults | section
        assert get_method(config.method, config).settings == dict(config[method])  # read as the table wrote it
    assert check_run_config(config) == []  # every value in range, none unused
    # torchvision's released ImageNet weights, where torchvision downloads them
    assert config.teacher.checkpoint == {"tv_resnet34": "~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth",
                                         "tv_resnet50": "~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth"}[teacher]


def test_the_command_line_takes_the_triple_the_table_and_its_labels():
    flags_ = parse_command_line(["train", "--config", "configs/imagenet.py:tv_resnet50,mobilenet_v1,dkd",
                                 "--workdir", "unused", "--config.batch_size=1024"])
    expected = recipes.imagenet("tv_resnet50", "MobileNetV1", "dkd")
    assert flags_.config.to_dict() == dict(expected.to_dict(), batch_size=1024)
    assert base_learning_rate(flags_.config) == pytest.approx(0.4)  # lr follows the global batch
    with pytest.raises(UserError, match="method 'fitnet' is not one of kd, at, crd"):
        parse_command_line(["train", "--config", "configs/imagenet.py:tv_resnet34,tv_resnet18,fitnet",
                            "--workdir", "unused"])
    labels = {m: method_label(recipes.imagenet("tv_resnet34", "tv_resnet18", m).to_dict())
              for m in recipes.IMAGENET_METHODS}
    assert labels == {"kd": "kd", "at": "at", "crd": "crd", "reviewkd": "reviewkd", "dkd": "dkd", "ofd": "ofd",
                      "kd_dot": "kd+dot", "dist": "dist", "kd_ls": "kd+ls"}
