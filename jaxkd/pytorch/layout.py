"""The state_dict layouts of the seed family and how each tensor maps onto the Flax variables (RepDistiller's
other architectures map by one rule instead: `jaxkd.pytorch.module_paths`).

One table, `seed_layout(arch, num_classes)`, lists every key of the seed's `state_dict()` in PyTorch's order,
with its shape and its place in the Flax tree; both directions of the converter read it. RepDistiller's
WideResNet names the same tensors differently (RepDistiller's `models/wrn.py`); `rename_repdistiller_key` maps
those names onto the seed's, bijectively.
"""

import re
from typing import NamedTuple

from jaxkd.models import ARCHITECTURES, canonical_name
from jaxkd.models.resnet import STAGE_CHANNELS

# torchvision: its plain `state_dict()` files; mdistiller: `{"model": state_dict}` as its trainer writes a student
LAYOUTS = ("pytorch-kd", "repdistiller", "torchvision", "mdistiller")
REPDISTILLER_WRN = "repdistiller-wrn"  # RepDistiller's names for the seed's WideResNets: the repdistiller layout

BN_TENSORS = (  # torch name -> (Flax collection, Flax leaf); num_batches_tracked has no Flax counterpart
    ("weight", "params", "scale"),
    ("bias", "params", "bias"),
    ("running_mean", "batch_stats", "mean"),
    ("running_var", "batch_stats", "var"),
    ("num_batches_tracked", None, None),
)


class Entry(NamedTuple):
    """One tensor of the torch state_dict: its key, shape, Flax location and kind (conv/linear/vector/counter)."""

    key: str
    shape: tuple
    collection: str | None  # "params", "batch_stats", or None for num_batches_tracked
    path: tuple  # path inside the collection
    kind: str  # "conv" (OIHW <-> HWIO), "linear" ((out, in) <-> (in, out)), "vector", "counter"


def _conv(key, path, out_ch, in_ch, size):
    return Entry(key, (out_ch, in_ch, size, size), "params", path + ("kernel",), "conv")


def _batchnorm(prefix, path, channels):
    return [Entry(f"{prefix}.{torch_name}", (channels,) if collection else (), collection,
                  path + (leaf,) if collection else (), "vector" if collection else "counter")
            for torch_name, collection, leaf in BN_TENSORS]


def seed_layout(arch: str, num_classes: int) -> list[Entry]:
    """Every tensor of the seed's `state_dict()` for `arch`, in PyTorch's key order."""
    blocks_per_stage, width = ARCHITECTURES[canonical_name(arch)]
    entries = [_conv("layer0.weight", ("layer0",), STAGE_CHANNELS[0], 3, 3)]
    in_ch = STAGE_CHANNELS[0]
    for stage, channels in enumerate(STAGE_CHANNELS, start=1):
        out_ch = channels * width
        for i in range(blocks_per_stage):
            prefix, block = f"layer{stage}.{i}", f"layer{stage}_{i}"
            stride = 2 if (stage > 1 and i == 0) else 1
            entries += _batchnorm(f"{prefix}.bn1", (block, "bn1"), in_ch)
            entries.append(_conv(f"{prefix}.conv1.weight", (block, "conv1"), out_ch, in_ch, 3))
            entries += _batchnorm(f"{prefix}.bn2", (block, "bn2"), out_ch)
            entries.append(_conv(f"{prefix}.conv2.weight", (block, "conv2"), out_ch, out_ch, 3))
            if stride != 1 or in_ch != out_ch:
                entries.append(_conv(f"{prefix}.shortcut.0.weight", (block, "shortcut"), out_ch, in_ch, 1))
            in_ch = out_ch
    entries += _batchnorm("finalact.0", ("finalact",), in_ch)
    entries.append(Entry("linear.weight", (num_classes, in_ch), "params", ("linear", "kernel"), "linear"))
    entries.append(Entry("linear.bias", (num_classes,), "params", ("linear", "bias"), "vector"))
    return entries


_RD_BLOCK = re.compile(r"^block(\d)\.layer\.(\d+)\.(.*)$")


def rename_repdistiller_key(key: str) -> str:
    """RepDistiller WRN key -> seed key: conv1 -> layer0, block{g}.layer.{i} -> layer{g}.{i},
    convShortcut -> shortcut.0, bn1 -> finalact.0, fc -> linear."""
    match = _RD_BLOCK.match(key)
    if match:
        stage, index, rest = match.groups()
        if rest.startswith("convShortcut."):
            rest = "shortcut.0." + rest[len("convShortcut."):]
        return f"layer{stage}.{index}.{rest}"
    if key == "conv1.weight":
        return "layer0.weight"
    if key.startswith("bn1."):
        return "finalact.0." + key[len("bn1."):]
    if key.startswith("fc."):
        return "linear." + key[len("fc."):]
    return key


def to_repdistiller_key(key: str) -> str:
    """Seed key -> RepDistiller WRN key (inverse of `rename_repdistiller_key`)."""
    match = re.match(r"^layer([123])\.(\d+)\.(.*)$", key)
    if match:
        stage, index, rest = match.groups()
        if rest.startswith("shortcut.0."):
            rest = "convShortcut." + rest[len("shortcut.0."):]
        return f"block{stage}.layer.{index}.{rest}"
    if key == "layer0.weight":
        return "conv1.weight"
    if key.startswith("finalact.0."):
        return "bn1." + key[len("finalact.0."):]
    if key.startswith("linear."):
        return "fc." + key[len("linear."):]
    return key


def detect_layout(keys) -> str:
    """'pytorch-kd' (the seed's keys), REPDISTILLER_WRN (RepDistiller's WideResNet keys, renamed onto the seed's
    by `rename_repdistiller_key`) or 'repdistiller' (any other key set: RepDistiller's other architectures,
    matched against each by `jaxkd.pytorch.module_paths`)."""
    keys = set(keys)
    if "layer0.weight" in keys:
        return "pytorch-kd"
    if "conv1.weight" in keys and any(k.startswith("block1.layer.") for k in keys):
        return REPDISTILLER_WRN
    return "repdistiller"
