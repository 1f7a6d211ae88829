"""mdistiller's CIFAR-100 recipe for DKD, DIST, ReviewKD, KDSVD, OFD, logit standardization, DOT, NKD, WTTM,
SDD, CAT-KD and MLKD:
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
- `ofd`: mdistiller's `configs/cifar100/ofd.yaml` and CFG.OFD: CE weight 1, FEAT_WEIGHT 0.001, 1x1 connectors
  (CONNECTOR.KERNEL_SIZE 1), the teacher in train mode as its `OFD.train` leaves it; the teacher's family must
  name its BNs before the stage ReLUs (not the ShuffleNets, as in mdistiller);
- `kd_ls`, `dkd_ls`: sunshangquan/logit-standardization-KD `tools/train.py --logit-stand --base-temp T
  --kd-weight W` on its mdistiller configs: KD with CE 0.1, KD weight W, temperature T; DKD with alpha W and beta
  W times DKD's beta, temperature T. T and W (and DKD's beta, where given) are those of the log its README links for
  the pair (`logs/KD/kd,T,S,T,W.txt`, `logs/DKD/dkd,T,S,T,W[,BETA].txt`: `KD_LS`, `DKD_LS`), else the README's
  commands' 2 and 9 with the pair's mdistiller beta;
- `nkd`: yzd-v/cls_KD `configs/distillers/cifar100/res34_distill_res18_cifar.py` (its one CIFAR-100 config, on
  mmcls's ResNet34 -> ResNet18): NKDLoss temperature 3, gamma 3.5, beside the CE, both weight 1;
- `wttm`: zkxufo/TTM README's WTTM command (`--ttm_l 0.2`, WTTM weight 4; its paper's per-pair values are not in
  the repository): exponent 0.2, weight 4, CE weight 1, no KD term. Its `train_student.py` is RepDistiller's, with
  the same training recipe.
- `sdd_kd`, `sdd_dkd`: shicaiwei123/SDD-CVPR2024 `train_origin.py --cfg configs/cifar100/sdd_{kd,dkd}/*.yaml --M M`
  (method `sdd`, base `kd` or `dkd`): SDD_KD with CFG.KD's CE 0.1, KD 0.9, T 4; SDD_DKD with CFG.DKD's CE 1,
  alpha 1, beta 8 (its yaml files' 2 or 6 for some pairs: `SDD_DKD_BETA`), T 4, `--warmup` 20; M 1,2,4, or
  1,2 where its teacher_*.sh run the pair so (`SDD_SCALES`);
- `catkd`: GzyAftermath/CAT-KD `configs/cifar100/CAT_KD/*.yaml`: CE 1, CAT_loss_weight as beta, CAM_RESOLUTION,
  IF_NORMALIZE (`CATKD`; other pairs take CFG.CAT_KD's 400, 2, True).
- `mlkd`: Jin-Ying/Multi-Level-Logit-Distillation `configs/cifar100/ours/*.yaml` (`tools/train_ours.py`, mdistiller's
  trainer on a weak and a strong view) over CFG.KD: CE weight 0.1 on each view (the weak view's as gamma, the strong
  view's in the term), KD weight 0.9 (`mlkd.weight`), temperature 4 beside its fixed 3, 5, 2, 6; its own training
  recipe: lr 0.025 (0.01 for the MobileNetV2 and Shuffle students) and 240 epochs, 480 or 960 for the pairs its
  configs train longer (`MLKD_EPOCHS`), the lr decay still at 150, 180, 210;
- `kd_dot`, `dkd_dot`: the DOT optimizer (`optimizer.dot`, docs/methods.md "DOT"): mdistiller's
  `configs/cifar100/dot/*.yaml` (trainer `dot`, DOT.DELTA 0.075) for KD with CFG.KD's CE weight 0.1, KD weight
  0.9, T 4; `dkd_dot` is the `dkd` entry under the same trainer and delta (mdistiller has no DKD + DOT config).
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
