"""The seed's model family by name: `get_model("wideresnet40_2", num_classes=100)`."""

from jaxkd.errors import UserError
from jaxkd.models.resnet import ModelOutput, ResNet

# name -> (blocks per stage n, width k). WRN-d-k has n = (d - 4) / 6; the seed's resnet{6n+2} has width 1.
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
ALIASES = {name.replace("wideresnet", "wrn"): name for name in ARCHITECTURES if name.startswith("wideresnet")}


def canonical_name(name: str) -> str:
    """The full architecture name for `name` or one of its short aliases (`wrn40_2` -> `wideresnet40_2`)."""
    key = name.strip().lower().replace("-", "_")
    for prefix in ("wrn_", "wideresnet_"):  # also accept wrn-40-2, wrn_40_2, wideresnet_40_2
        if key.startswith(prefix):
            key = prefix[:-1] + key[len(prefix):]
    key = ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(ARCHITECTURES)} "
                        f"(aliases: {', '.join(ALIASES)})")
    return key


def get_model(name: str, num_classes: int = 100, **kwargs) -> ResNet:
    """The Flax module for architecture `name`; `apply(variables, x_nhwc, train=...)` -> (features, logits)."""
    blocks_per_stage, width = ARCHITECTURES[canonical_name(name)]
    return ResNet(blocks_per_stage=blocks_per_stage, width=width, num_classes=num_classes, **kwargs)


__all__ = ["ARCHITECTURES", "ALIASES", "ModelOutput", "ResNet", "canonical_name", "get_model"]
