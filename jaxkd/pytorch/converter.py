"""PyTorch state_dicts <-> Flax variables for every architecture, in both directions, bit-exact.

Every tensor's place is given by a layout: `jaxkd.pytorch.layout.seed_layout` for the seed's family (its own keys, or
RepDistiller's WideResNet keys renamed onto them), `jaxkd.pytorch.module_paths.mirrored_layout` (one rule, derived from
the Flax model) for RepDistiller's other architectures and the ImageNet ones (torchvision's, mdistiller's
MobileNetV1). Convs are transposed OIHW <-> HWIO and linear weights
(out, in) <-> (in, out), nothing else changes, so `torch_to_flax(flax_to_torch(v)) == v` bitwise.
"""

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from jaxkd.errors import UserError
from jaxkd.models import ARCHITECTURES, IMAGENET_ARCHITECTURES, REPDISTILLER_ARCHITECTURES, canonical_name
from jaxkd.models.resnet import STAGE_CHANNELS
from jaxkd.models.torchvision_resnet import CONFIGS as TORCHVISION_RESNETS
from jaxkd.pytorch.layout import (LAYOUTS, REPDISTILLER_WRN, detect_layout, rename_repdistiller_key, seed_layout,
                                  to_repdistiller_key)
from jaxkd.pytorch.module_paths import mirrored_layout
from jaxkd.pytorch.torch_files import extract_state_dict, read_torch_file

# tv_resnet* -> its blocks per stage (torchvision's resnet18 ... wide_resnet50_2)
_TORCHVISION_RESNET_BLOCKS = {f"tv_{name}": layers for name, (_, layers, _) in TORCHVISION_RESNETS.items()}
SHOWN_KEYS = 6  # how many offending keys an error message lists before summarizing


class ImportedModel(NamedTuple):
    variables: dict  # {"params": ..., "batch_stats": ...} as float32 numpy arrays
    arch: str
    num_classes: int
    layout: str  # the layout the checkpoint was read in
    arch_inferred: bool  # True when `arch` came from the tensor shapes


def _listing(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def layout_entries(arch: str, num_classes: int):
    """Every tensor of `arch`'s PyTorch state_dict (seed keys for the seed family), in PyTorch's order."""
    arch = canonical_name(arch)
    return seed_layout(arch, num_classes) if arch in ARCHITECTURES else mirrored_layout(arch, num_classes)


def _classifier(entries):
    """The classifier's weight entry: the last linear layer of every architecture."""
    return [e for e in entries if e.kind == "linear"][-1]


def _num_classes(tensors: Mapping, arch: str, default: int = 100) -> int:
    weight = tensors.get(_classifier(layout_entries(arch, 1)).key)
    return tuple(weight.shape)[0] if weight is not None and weight.ndim == 2 else default


def _misfit(tensors: Mapping, entries, arch: str) -> tuple[list, list, list]:
    """(missing keys, unexpected keys, shape mismatches) of `tensors` against a layout."""
    expected = {e.key for e in entries}
    missing = [e.key for e in entries if e.key not in tensors and e.kind != "counter"]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{e.key} is {tuple(tensors[e.key].shape)}, {arch} expects {e.shape}"
                  for e in entries if e.key in tensors and tuple(tensors[e.key].shape) != e.shape]
    return missing, unexpected, mismatched


def infer_architecture(tensors: Mapping) -> tuple[str, int]:
    """(architecture name, num_classes) described by the keys and shapes of a state_dict: the seed's layout
    (RepDistiller's WideResNet keys renamed onto it) or one of RepDistiller's other architectures."""
    if "layer0.weight" not in tensors:
        return _infer_repdistiller_architecture(tensors)
    return _infer_seed_architecture(tensors)


def _infer_repdistiller_architecture(tensors: Mapping) -> tuple[str, int]:
    """The architecture of REPDISTILLER_ARCHITECTURES or IMAGENET_ARCHITECTURES whose state_dict keys and shapes
    `tensors` has exactly."""
    imagenet = _imagenet_candidates(tensors)
    # torchvision's ResNets whose blocks per stage `tensors` has, first: a torchvision file is then one or two
    # traces instead of one per RepDistiller architecture. An exact fit is unique, so no answer changes.
    for arch in (arch for arch in imagenet if arch in _TORCHVISION_RESNET_BLOCKS):
        num_classes = _num_classes(tensors, arch)
        if not any(_misfit(tensors, layout_entries(arch, num_classes), arch)):
            return arch, num_classes
    closest = None
    for arch in (*REPDISTILLER_ARCHITECTURES, *imagenet):
        probe = layout_entries(arch, 1)
        if not any(k in tensors for k in (probe[0].key, _classifier(probe).key)):
            continue  # neither the first nor the classifier's key: nothing like it
        missing, unexpected, mismatched = _misfit(tensors, probe, arch)
        classifier = _classifier(probe).key.rsplit(".", 1)[0] + "."  # its shapes depend on the classes: below
        mismatched = [m for m in mismatched if not m.startswith(classifier)]
        if not (missing or unexpected):  # the same keys: check every shape, the classifier's with its classes
            num_classes = _num_classes(tensors, arch)
            _, _, mismatched = _misfit(tensors, layout_entries(arch, num_classes), arch)
            if not mismatched:
                return arch, num_classes
        distance = len(missing) + len(unexpected) + len(mismatched)
        if closest is None or distance < closest[0]:
            closest = (distance, arch, missing, unexpected, mismatched)
    first = ", ".join(sorted(tensors)[:5])
    if closest is None:
        raise UserError(f"not a state_dict of an architecture jaxkd knows: no 'layer0.weight' (the seed's "
                        f"layout), no 'conv1.weight' + 'block1.layer.*' (RepDistiller's WideResNet), and none of "
                        f"RepDistiller's other architectures', torchvision's or mdistiller's MobileNetV1's keys "
                        f"(first keys: {first})")
    _, arch, missing, unexpected, mismatched = closest
    parts = ([f"missing keys: {_listing(missing)}"] if missing else []) + (
        [f"unexpected keys: {_listing(unexpected)}"] if unexpected else []) + (
        [f"shape mismatch: {_listing(mismatched)}"] if mismatched else [])
    raise UserError(f"the keys and shapes fit none of jaxkd's architectures; the closest is {arch}: "
                    f"{'; '.join(parts)}")


def _imagenet_candidates(tensors: Mapping) -> list[str]:
    """The ImageNet architectures to match `tensors` against (each is one trace of its model): torchvision's
    ResNets only where `tensors` has their blocks per stage (`layer{1..4}.{i}.conv1.weight`)."""
    pattern = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")
    blocks = [set() for _ in range(4)]
    for key in tensors:
        if match := pattern.match(key):
            blocks[int(match.group(1)) - 1].add(match.group(2))
    blocks = tuple(len(indices) for indices in blocks)
    return [arch for arch in IMAGENET_ARCHITECTURES
            if arch not in _TORCHVISION_RESNET_BLOCKS or _TORCHVISION_RESNET_BLOCKS[arch] == blocks]


def _infer_seed_architecture(tensors: Mapping) -> tuple[str, int]:
    """(architecture name, num_classes) described by the shapes of a seed-layout state_dict."""
    blocks = {}
    for stage in (1, 2, 3):
        pattern = re.compile(rf"^layer{stage}\.(\d+)\.conv1\.weight$")
        blocks[stage] = sorted(int(m.group(1)) for k in tensors if (m := pattern.match(k)))
    if not all(blocks.values()) or "linear.weight" not in tensors:
        raise UserError("cannot infer the architecture: the state_dict lacks 'layer{1,2,3}.*.conv1.weight' "
                        "or 'linear.weight'")
    blocks_per_stage = len(blocks[1])
    if any(blocks[s] != list(range(blocks_per_stage)) for s in (1, 2, 3)):
        counts = ", ".join(f"stage {s}: {len(b)}" for s, b in blocks.items())
        raise UserError(f"cannot infer the architecture: the stages have different block counts ({counts})")
    channels = tuple(tensors["layer1.0.conv1.weight"].shape)[0]
    width, remainder = divmod(channels, STAGE_CHANNELS[0])
    num_classes = tuple(tensors["linear.weight"].shape)[0]
    for name, spec in ARCHITECTURES.items():
        if spec == (blocks_per_stage, width) and remainder == 0:
            return name, num_classes
    raise UserError(f"the tensor shapes describe a pre-activation ResNet with {blocks_per_stage} blocks per "
                    f"stage and {channels} first-stage channels, which is none of: {', '.join(ARCHITECTURES)}")


def _fits_hint(tensors, requested: str) -> str:
    try:
        inferred, _ = infer_architecture(tensors)
    except UserError:
        return ""
    return f" (its shapes fit {inferred})" if inferred != requested else ""


def _torch_to_flax_array(tensor: torch.Tensor, kind: str) -> np.ndarray:
    array = tensor.detach().cpu().float().numpy()  # shares memory with the tensor: copied below
    if kind == "conv":
        array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif kind == "linear":
        array = array.T  # (out, in) -> (in, out)
    return np.array(array, dtype=np.float32, order="C", copy=True)


def _flax_to_torch_tensor(array, kind: str) -> torch.Tensor:
    array = np.asarray(array, dtype=np.float32)
    if kind == "conv":
        array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif kind == "linear":
        array = array.T
    return torch.from_numpy(np.array(array, order="C", copy=True))  # never aliases the caller's arrays


def _set_path(tree: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def import_torch(src, arch: str | None = None, layout: str = "auto", source: str | None = None) -> ImportedModel:
    """Reads a `.pth` path or an already-loaded mapping into Flax variables, checking every key and shape."""
    if layout not in ("auto",) + LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose auto, {', '.join(LAYOUTS)}")
    if isinstance(src, Mapping):
        source = source or "state_dict"
        tensors = extract_state_dict(src, source)
    else:
        source = source or str(src)
        tensors = extract_state_dict(read_torch_file(src), source)
    detected = detect_layout(tensors)
    if detected == REPDISTILLER_WRN:
        tensors = {rename_repdistiller_key(k): v for k, v in tensors.items()}

    arch_inferred = arch is None
    if arch_inferred:
        arch, num_classes = infer_architecture(tensors)
    else:
        arch = canonical_name(arch)
        num_classes = _num_classes(tensors, arch)
    # the seed's keys, RepDistiller's WRN keys, or the mirrored keys of the architecture's own code
    found = {"pytorch-kd": "pytorch-kd", REPDISTILLER_WRN: "repdistiller"}.get(detected)
    found = found or (native_layout(arch) if arch not in ARCHITECTURES else "repdistiller")
    if layout not in ("auto", found):
        raise UserError(f"{source}: layout {layout} was asked for, but its keys are in the {found} layout")
    layout = found

    entries = layout_entries(arch, num_classes)
    missing, unexpected, mismatched = _misfit(tensors, entries, arch)
    if missing or unexpected:
        parts = ([f"missing keys: {_listing(missing)}"] if missing else []) + (
            [f"unexpected keys: {_listing(unexpected)}"] if unexpected else [])
        raise UserError(f"{source}: does not fit {arch}{_fits_hint(tensors, arch)}: {'; '.join(parts)}")
    if mismatched:
        raise UserError(f"{source}: does not fit {arch}{_fits_hint(tensors, arch)}: shape mismatch: "
                        f"{_listing(mismatched)}")

    variables: dict = {"params": {}, "batch_stats": {}}
    for entry in entries:
        if entry.collection is not None:
            _set_path(variables[entry.collection], entry.path,
                      _torch_to_flax_array(tensors[entry.key], entry.kind))
    return ImportedModel(variables, arch, num_classes, layout, arch_inferred)


def torch_to_flax(src, arch: str | None = None, layout: str = "auto") -> dict:
    """`{"params": ..., "batch_stats": ...}` from a `.pth` path or a loaded state_dict (see `import_torch`)."""
    return import_torch(src, arch, layout).variables


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaf_paths(value, prefix + (str(key),))
    else:
        yield prefix


def native_layout(arch: str) -> str:
    """The layout an architecture's own PyTorch code has: the seed's for its family, torchvision's for its
    architectures, mdistiller's for its MobileNetV1, RepDistiller's otherwise."""
    arch = canonical_name(arch)
    if arch in ARCHITECTURES:
        return "pytorch-kd"
    if arch in IMAGENET_ARCHITECTURES:
        return "mdistiller" if arch == "MobileNetV1" else "torchvision"
    return "repdistiller"


def flax_to_torch(variables: Mapping, arch: str, layout: str | None = None,
                  num_batches_tracked: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict the seed's (or RepDistiller's) code loads strictly, from Flax variables of `arch`.

    `layout`: "pytorch-kd" or "repdistiller" for the seed's family (default "pytorch-kd"; RepDistiller's names
    exist for its WideResNets), "repdistiller" (the default) for RepDistiller's other architectures.
    `num_batches_tracked` fills PyTorch's BN counters (unused by PyTorch with momentum 0.1; training passes
    its step count)."""
    arch = canonical_name(arch)
    layout = layout or native_layout(arch)
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose {', '.join(LAYOUTS)}")
    if layout != native_layout(arch) and arch not in ARCHITECTURES:
        raise UserError(f"{arch} has the {native_layout(arch)} layout only; use --layout {native_layout(arch)}")
    kernel = variables.get("params", {})
    for part in _classifier(layout_entries(arch, 1)).path:
        kernel = kernel.get(part, {}) if isinstance(kernel, Mapping) else {}
    num_classes = np.shape(kernel)[1] if np.ndim(kernel) == 2 else 100
    entries = layout_entries(arch, num_classes)

    expected = {(e.collection,) + e.path: e for e in entries if e.collection is not None}
    present = {path for collection in ("params", "batch_stats")
               for path in _leaf_paths(variables.get(collection, {}), (collection,))}
    missing = ["/".join(p) for p in expected if p not in present]
    unexpected = ["/".join(p) for p in sorted(present) if p not in expected]
    if missing or unexpected:
        parts = ([f"missing: {_listing(missing)}"] if missing else []) + (
            [f"unexpected: {_listing(unexpected)}"] if unexpected else [])
        raise UserError(f"the variables do not fit {arch}: {'; '.join(parts)}")

    state_dict = OrderedDict()
    for entry in entries:
        key = to_repdistiller_key(entry.key) if layout == "repdistiller" and arch in ARCHITECTURES else entry.key
        if entry.collection is None:
            state_dict[key] = torch.tensor(num_batches_tracked, dtype=torch.long)
            continue
        value = variables[entry.collection]
        for part in entry.path:
            value = value[part]
        tensor = _flax_to_torch_tensor(value, entry.kind)
        if tuple(tensor.shape) != entry.shape:
            raise UserError(f"the variables do not fit {arch}: {'/'.join(entry.path)} gives {entry.key} of "
                            f"shape {tuple(tensor.shape)}, expected {entry.shape}")
        state_dict[key] = tensor
    return state_dict
