"""mdistiller's CIFAR-100 recipe for DKD, DIST, ReviewKD, KDSVD and logit standardization:
`--config configs/mdistiller.py:T,S,M`.

    python -m jaxkd.train --config configs/mdistiller.py:resnet32x4,resnet8x4,dkd --workdir workdirs/dkd_r32x4_r8x4
    python -m jaxkd.train --config configs/mdistiller.py:wrn_40_2,wrn_16_2,kd_ls --workdir workdirs/kdls_w402_w162

T and S are model names in mdistiller's (= RepDistiller's) spelling, or any jaxkd name. M is one of
- `dkd`: megvii-research/mdistiller `configs/cifar100/dkd/*.yaml` over `mdistiller/engine/cfg.py` CFG.DKD: CE
  weight 1, alpha 1, beta 8 (2 for resnet56 -> resnet20 and resnet110 -> resnet32, 6 for the vgg13 and
  wrn_40_2 -> wrn_16_2 / wrn_40_1 pairs: `DKD_BETA`), T 4, warm-up 20 epochs;
- `dist`: hunto/image_classification_sota `configs/strategies/distill/dist_cifar.yaml` (kd `dist_t4`,
  `kd_loss_weight` 2, `ori_loss_weight` 1) and `lib/models/losses/kd_loss.py`: DIST(beta 1, gamma 1, tau 4);
- `reviewkd`: mdistiller's `configs/cifar100/reviewkd.yaml` and CFG.REVIEWKD: CE weight 1, REVIEWKD_WEIGHT 5,
  warm-up 20, the student's post-ReLU stage outputs (STU_PREACT False); for pairs mdistiller has no config for,
  the weight of dvlab-research/ReviewKD `CIFAR-100/script/reviewKD.sh` (`REVIEWKD_WEIGHT`);
- `kdsvd`: mdistiller's `configs/cifar100/kdsvd.yaml` and CFG.KDSVD: CE weight 1, FEAT_WEIGHT 1, K 1 (RepDistiller's
  `train_student.py` wires KDSVD but its `run_cifar_distill.sh` gives it no weight);
- `kd_ls`, `dkd_ls`: sunshangquan/logit-standardization-KD `tools/train.py --logit-stand --base-temp T
  --kd-weight W` on its mdistiller configs: KD with CE 0.1, KD weight W, temperature T; DKD with alpha W and beta
  W times DKD's beta, temperature T. T and W (and DKD's beta, where given) are those of the log its README links for
  the pair (`logs/KD/kd,T,S,T,W.txt`, `logs/DKD/dkd,T,S,T,W[,BETA].txt`: `KD_LS`, `DKD_LS`), else the README's
  commands' 2 and 9 with the pair's mdistiller beta.
The training recipe is mdistiller's `configs/cifar100/*.yaml` and `mdistiller/engine/utils.py`: 240 epochs,
batch 64, SGD momentum 0.9, weight decay 5e-4, lr 0.05 (0.01 for MobileNetV2, ShuffleV1 and ShuffleV2 students,
as its yaml files), x0.1 from the first step of epochs 151, 181, 211 (`adjust_learning_rate` at the start of each
1-based epoch), and its data pipeline (`mdistiller/dataset/cifar100.py`: RandomCrop(32, padding=4), flip, the
RepDistiller mean/std, no drop_last): jaxkd's `repdistiller_recipe`. DIST's own recipe has the same
hyperparameters. The teacher is expected where mdistiller's `cifar_teachers.tar` puts it,
`download_ckpts/cifar_teachers/<T>_vanilla/ckpt_epoch_240.pth` (RepDistiller's files); `--config.teacher.checkpoint`
points elsewhere.
"""

from configs import default
from configs.repdistiller import LOW_LR_STUDENTS, jaxkd_name, repdistiller_name, teacher_student_method
from jaxkd.methods import config_section

METHODS = ("dkd", "dist", "reviewkd", "kdsvd", "kd_ls", "dkd_ls")
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


def get_config(arguments: str = "resnet32x4,resnet8x4,dkd"):
    teacher, student, method = teacher_student_method(arguments, "configs/mdistiller.py", METHODS)
    config = default.repdistiller_recipe(default.get_config())
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
    elif method == "kdsvd":
        config.kdsvd = config_section("kdsvd")
    else:
        config.loss.beta = REVIEWKD_WEIGHT.get(pair, 5.0)
        config.reviewkd = config_section("reviewkd")
    return config
