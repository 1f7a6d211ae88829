"""PyTorch reference of CAT-KD, written from the authors' code (GzyAftermath/CAT-KD, not from jaxkd's):
`mdistiller/distillers/CAT_KD.py` (`_Normalize`, `CAT_loss`; `CAT_KD.forward_train` without the binarization and
partial-CAM options, which the CAT-KD configs leave off) and the `*_test` models' head
(`mdistiller/models/cifar/wrn.py` `WideResNet_test.forward`: `conv_test`, a bias-free 1x1 conv whose weight
`tools/train.py` sets to the teacher's `fc.weight.view(out, in, 1, 1)`)."""

import torch.nn.functional as F


def class_activation_maps(feature_map, fc_weight):
    """`self.conv_test(out)` with `conv_test.weight = fc.weight.view(classes, channels, 1, 1)`: (B, classes, H, W)."""
    return F.conv2d(feature_map, fc_weight.view(fc_weight.shape[0], fc_weight.shape[1], 1, 1))


def _Normalize(feat, IF_NORMALIZE):
    if IF_NORMALIZE:
        feat = F.normalize(feat, dim=(2, 3))
    return feat


def CAT_loss(CAM_Student, CAM_Teacher, CAM_RESOLUTION, IF_NORMALIZE):
    CAM_Student = F.adaptive_avg_pool2d(CAM_Student, (CAM_RESOLUTION, CAM_RESOLUTION))
    CAM_Teacher = F.adaptive_avg_pool2d(CAM_Teacher, (CAM_RESOLUTION, CAM_RESOLUTION))
    return F.mse_loss(_Normalize(CAM_Student, IF_NORMALIZE), _Normalize(CAM_Teacher, IF_NORMALIZE))
