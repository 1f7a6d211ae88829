"""Every architecture by name: `get_model("wideresnet40_2", num_classes=100)`, `get_model("resnet32x4")`.

Two sources (docs/models.md lists every name with its size):
- the seed's pre-activation family (`jaxkd/models/resnet.py`): `resnet8/20/32/44/56` (pre-activation WRN-(6n+4)-1)
  and `wideresnet{16_1,16_2,16_4,28_4,40_1,40_2}` (aliases `wrn40_2`, `wrn-40-2`, RepDistiller's `wrn_40_2`;
  RepDistiller's WideResNet is this architecture under other state_dict names);
- RepDistiller's `models/__init__.py` `model_dict`: its post-activation resnets as `rd_resnet{8,14,20,32,44,56,110}`,
  `rd_resnet8x4`, `rd_resnet32x4` (RepDistiller's own `resnet8x4` and `resnet32x4` are accepted too; its
  `resnet8`..`resnet110` are not, since the seed's `resnet8`..`resnet56` are another family), `ResNet50`,
  `vgg8/11/13/16/19` (BN; also `vgg13_bn`), `MobileNetV2` (also `mobile_half`), `ShuffleV1`, `ShuffleV2`;
- ImageNet's: torchvision's `resnet18/34/50/101/152`, `wide_resnet50_2` and `mobilenet_v2` as `tv_resnet18` ...
  `tv_wide_resnet50_2`, `tv_mobilenet_v2` (`tv_`: the bare names are the CIFAR families' `resnet8`.., `ResNet50`,
  `MobileNetV2`), and mdistiller's ImageNet `MobileNetV1` (also `mobilenet_v1`).
Names are case-insensitive; `-` and `_` are interchangeable.
"""

from functools import partial

import jax.numpy as jnp

from jaxkd.errors import UserError
from jaxkd.models.mobilenetv1 import MobileNetV1
from jaxkd.models.mobilenetv2 import MobileNetV2
from jaxkd.models.output import ModelOutput
from jaxkd.models.postact_resnet import PostActResNet
from jaxkd.models.resnet import ResNet
from jaxkd.models.resnet50 import ResNet50
from jaxkd.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from jaxkd.models.torchvision_mobilenetv2 import TorchvisionMobileNetV2
from jaxkd.models.torchvision_resnet import CONFIGS as TORCHVISION_RESNETS
from jaxkd.models.torchvision_resnet import TorchvisionResNet
from jaxkd.models.vgg import VGG

# `config.dtype` -> the dtype the models compute in (parameters and losses stay float32)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The seed family: name -> (blocks per stage n, width k). WRN-d-k has n = (d - 4) / 6; resnet{6n+2} has width 1.
ARCHITECTURES = {
    "resnet8": (1, 1),
    "resnet20": (3, 1),
    "resnet32": (5, 1),
    "resnet44": (7, 1),
    "resnet56": (9, 1),
    "wideresnet16_1": (2, 1),
    "wideresnet16_2": (2, 2),
    "wideresnet16_4": (2, 4),
    "wideresnet28_4": (4, 4),
    "wideresnet40_1": (6, 1),
    "wideresnet40_2": (6, 2),
}
_CIFAR_FILTERS, _X4_FILTERS = (16, 16, 32, 64), (32, 64, 128, 256)
# RepDistiller's architectures other than its WideResNets: name -> the Flax module class with its settings.
REPDISTILLER_ARCHITECTURES = {
    **{f"rd_resnet{depth}": partial(PostActResNet, depth, _CIFAR_FILTERS) for depth in (8, 14, 20, 32, 44, 56, 110)},
    "rd_resnet8x4": partial(PostActResNet, 8, _X4_FILTERS),
    "rd_resnet32x4": partial(PostActResNet, 32, _X4_FILTERS),
    "ResNet50": ResNet50,
    **{f"vgg{depth}": partial(VGG, depth) for depth in (8, 11, 13, 16, 19)},
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
}
# ImageNet architectures (torchvision's files and mdistiller's student; any input size): name -> module class.
IMAGENET_ARCHITECTURES = {
    **{f"tv_{name}": partial(TorchvisionResNet, block, layers, width) for name, (block, layers, width)
       in TORCHVISION_RESNETS.items()},
    "tv_mobilenet_v2": TorchvisionMobileNetV2,
    "MobileNetV1": MobileNetV1,
}
ALIASES = {
    **{name.replace("wideresnet", "wrn"): name for name in ARCHITECTURES if name.startswith("wideresnet")},
    "resnet8x4": "rd_resnet8x4",
    "resnet32x4": "rd_resnet32x4",
    **{f"vgg{depth}_bn": f"vgg{depth}" for depth in (8, 11, 13, 16, 19)},
    "mobile_half": "MobileNetV2",
    "mobilenet_v1": "MobileNetV1",
}
_BY_LOWER_NAME = {name.lower(): name for name in (*ARCHITECTURES, *REPDISTILLER_ARCHITECTURES,
                                                  *IMAGENET_ARCHITECTURES)}
_BY_LOWER_NAME.update({alias.lower(): name for alias, name in ALIASES.items()})


def all_architectures() -> list[str]:
    """Every canonical architecture name: the seed family, RepDistiller's, then the ImageNet ones."""
    return [*ARCHITECTURES, *REPDISTILLER_ARCHITECTURES, *IMAGENET_ARCHITECTURES]


def canonical_name(name: str) -> str:
    """The canonical architecture name for `name` or one of its aliases (`wrn_40_2` -> `wideresnet40_2`,
    `resnet32x4` -> `rd_resnet32x4`, `resnet50` -> `ResNet50`)."""
    key = name.strip().lower().replace("-", "_")
    for prefix in ("wrn_", "wideresnet_"):  # also accept wrn-40-2, wrn_40_2, wideresnet_40_2
        if key.startswith(prefix):
            key = prefix[:-1] + key[len(prefix):]
    if key not in _BY_LOWER_NAME:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(all_architectures())} "
                        f"(aliases: {', '.join(ALIASES)})")
    return _BY_LOWER_NAME[key]


def is_seed_architecture(name: str) -> bool:
    """True for the seed's pre-activation family (its own state_dict layouts), False for RepDistiller's others."""
    return canonical_name(name) in ARCHITECTURES


def get_model(name: str, num_classes: int = 100, **kwargs):
    """The Flax module for architecture `name`: `apply(variables, x_nhwc, train=...)` -> (features, logits),
    `apply(..., method=model.forward)` -> `ModelOutput`. `kwargs`: `dtype` (the compute dtype)."""
    name = canonical_name(name)
    if name in ARCHITECTURES:
        blocks_per_stage, width = ARCHITECTURES[name]
        return ResNet(blocks_per_stage=blocks_per_stage, width=width, num_classes=num_classes, **kwargs)
    if name in IMAGENET_ARCHITECTURES:
        return IMAGENET_ARCHITECTURES[name](num_classes=num_classes, **kwargs)
    return REPDISTILLER_ARCHITECTURES[name](num_classes=num_classes, **kwargs)


__all__ = ["ALIASES", "ARCHITECTURES", "COMPUTE_DTYPES", "IMAGENET_ARCHITECTURES", "REPDISTILLER_ARCHITECTURES",
           "ModelOutput", "ResNet", "all_architectures", "canonical_name", "get_model", "is_seed_architecture"]
