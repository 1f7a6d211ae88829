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
- `kdsvd`: mdistiller's `configs/cifar100/kdsvd.yaml` and CFG.KDSVD: CE weight 1, FEAT_WEIGHT 1, K 1, and its
  `kdsvd_loss`, which decomposes each map as (C*H, W) (`kdsvd.layout = "mdistiller"`; RepDistiller's (H*W, C)
  term, which its `run_cifar_distill.sh` gives no weight, is `--config.kdsvd.layout=repdistiller`);
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
points elsewhere. The tables named above live in jaxkd/config/recipes.py, which this config reads.
"""

from jaxkd.config import recipes


def get_config(arguments: str = "resnet32x4,resnet8x4,dkd"):
    return recipes.mdistiller(*recipes.teacher_student_method(arguments, "configs/mdistiller.py",
                                                              recipes.MDISTILLER_METHODS))
