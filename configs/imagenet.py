"""mdistiller's ImageNet recipe for KD, AT, CRD, ReviewKD, DKD, OFD and KD + DOT, with DIST's and logit
standardization's own ImageNet settings: `--config configs/imagenet.py:T,S,M`.

    python -m jaxkd.train --config configs/imagenet.py:tv_resnet34,tv_resnet18,dkd --workdir workdirs/in_dkd_r34_r18
    python -m jaxkd.train --config configs/imagenet.py:tv_resnet50,MobileNetV1,kd --workdir workdirs/in_kd_r50_mv1

T and S are jaxkd model names: the table's pairs are ResNet-34 -> ResNet-18 (`tv_resnet34,tv_resnet18`) and
ResNet-50 -> MobileNetV1 (`tv_resnet50,MobileNetV1`); other pairs take the R34 -> R18 settings. M is one of
- `kd`: megvii-research/mdistiller `configs/imagenet/*/kd.yaml`: CE weight 0.5, KD weight 0.5, temperature 1;
- `at`: `*/at.yaml` over `mdistiller/engine/cfg.py` CFG.AT: CE 1, FEAT_WEIGHT 1000, p 2;
- `crd`: `*/crd.yaml` (batch 256) over CFG.CRD: CE 1, FEAT_WEIGHT 0.8, feature dim 128, 16384 negatives, NCE T 0.07,
  momentum 0.5;
- `reviewkd`: `*/reviewkd.yaml` (batch 256): CE 1, REVIEWKD_WEIGHT 1 (R34 -> R18) or 8 (R50 -> MV1), warm-up 1 epoch,
  the student's pre-ReLU stage outputs (STU_PREACT True), MAX_MID_CHANNEL 512 or 256;
- `dkd`: `*/dkd.yaml`: CE 1, alpha 1, beta 0.5 (R34 -> R18) or 2 (R50 -> MV1), T 1, warm-up 1 epoch;
- `ofd`: `r50_mv1/ofd.yaml` (batch 128; mdistiller has no R34 -> R18 file): CE 1, FEAT_WEIGHT 0.0001, 1x1 connectors;
- `kd_dot`: `*/dot.yaml`: `kd` under the DOT optimizer with delta 0.09;
- `dist`: hunto/DIST_KD's ImageNet command (its classification/ is hunto/image_classification_sota)
  `configs/strategies/distill/resnet_dist.yaml` on 8 GPUs: batch 256, lr 0.1, Nesterov, x0.1 every 30 epochs,
  CE 1, DIST weight 2 with beta 1, gamma 1, tau 1;
- `kd_ls`: sunshangquan/logit-standardization-KD README's ImageNet command, `configs/imagenet/r34_r18/kd.yaml
  --logit-stand --base-temp 2 --kd-weight 9`: CE 1 (its kd.yaml), KD weight 9, temperature 2, standardized logits.
The training recipe (every mdistiller ImageNet yaml): 100 epochs, SGD momentum 0.9, weight decay 1e-4, x0.1 from
the first step of epochs 31, 61, 91 (`adjust_learning_rate`), batch 512 at lr 0.2; where a file lowers the batch
it lowers the lr with it (256 at 0.1, 128 at 0.05), so the lr is 0.2 * batch / 512 (`optimizer.lr_scaling`
"linear", `lr_reference_batch` 512) and `--config.batch_size` rescales it the same way. The teacher is torchvision's
released file where torchvision downloads it, `~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth` (ResNet-50:
`resnet50-0676ba61.pth`); `--config.teacher.checkpoint` points elsewhere. The data: TFDS `imagenet2012` through
the streaming input path (`data.source` "tfds_images", torchvision's transforms and normalization; docs/data.md
"ImageNet and your own images"), or an ImageFolder tree with `--config.data.source=imagefolder
--config.data.data_dir=...`. The tables live in jaxkd/config/recipes.py (`imagenet`), which this config reads.
"""

from jaxkd.config import recipes


def get_config(arguments: str = "tv_resnet34,tv_resnet18,kd"):
    return recipes.imagenet(*recipes.teacher_student_method(arguments, "configs/imagenet.py",
                                                            recipes.IMAGENET_METHODS))
