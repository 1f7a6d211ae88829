"""One way to open a model a user names: a training workdir (its final `model/`), a model checkpoint directory
(`convert import`, training's exports) or a `.pth` file of any supported layout, local or `gs://`.

`open_model` decides once which of these a reference is and returns the model built for its architecture and
classes, its variables and metadata; a run's teacher, `jaxkd.evaluate`, `jaxkd.robustness` and `convert export`
open models through it (docs/evaluate.md).
"""

import dataclasses
from typing import Any

from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import TRAINED_MODEL_DIR, is_model_checkpoint, not_a_checkpoint, read_model_checkpoint
from jaxkd.io.paths import absolute, as_path, input_exists
from jaxkd.io.workdir import RENAMED_VALUES
from jaxkd.models import canonical_name, get_model

WORKDIR, MODEL_CHECKPOINT, TORCH_FILE = "training workdir", "model checkpoint", ".pth file"


@dataclasses.dataclass
class OpenedModel:
    """A model opened from a reference, ready to apply."""

    model: Any  # the Flax module of `arch` for `num_classes`
    variables: dict  # {"params": ..., "batch_stats": ...} as numpy arrays
    arch: str  # as the checkpoint's metadata names it, or as the .pth was read
    num_classes: int
    metadata: dict | None  # the model checkpoint's metadata; None for a .pth
    normalization: str  # the mean/std its inputs were normalized with in training (jaxkd.data.augment)
    kind: str  # WORKDIR, MODEL_CHECKPOINT or TORCH_FILE
    path: Any  # what was read: the .pth, the checkpoint directory or the workdir's model/


# the `.pth` layouts (jaxkd.pytorch.layout.LAYOUTS) of ImageNet-trained files: torchvision's released weights and
# mdistiller's ImageNet students were trained on ImageNet's mean/std (torchvision's `transforms.Normalize` in
# their references' ImageNet recipes)
IMAGENET_LAYOUTS = ("torchvision", "mdistiller")


def input_normalization(metadata: dict | None, layout: str | None = None) -> str:
    """The mean/std (jaxkd.data.augment.NORMALIZATIONS) a model's inputs were normalized with in training: its
    metadata says it (jaxkd.train writes it; "seed" in models exported before pytorch-kd's values were named
    "pytorch_kd"); for a `.pth` without metadata, ImageNet's for a torchvision- or mdistiller-layout file, otherwise
    pytorch-kd's, as for pytorch-kd's released `.pth` files."""
    if metadata and "normalization" in metadata:
        normalization = metadata["normalization"]
        return RENAMED_VALUES["data.normalization"].get(normalization, normalization)
    return "imagenet" if layout in IMAGENET_LAYOUTS else "pytorch_kd"


def reference_kind(reference) -> tuple[str, Any]:
    """(WORKDIR, MODEL_CHECKPOINT or TORCH_FILE, the path to read) of a model reference; one line (UserError) for a
    reference that is none of them."""
    path = as_path(reference)
    if not input_exists(path, str(path)):
        raise UserError(f"{path}: no such file or checkpoint directory")
    if not path.is_dir():
        return TORCH_FILE, path
    if is_model_checkpoint(path):
        return MODEL_CHECKPOINT, path
    if is_model_checkpoint(path / TRAINED_MODEL_DIR):
        return WORKDIR, path / TRAINED_MODEL_DIR
    raise not_a_checkpoint(path)


def open_model(reference, arch: str | None = None, **model_kwargs) -> OpenedModel:
    """The model `reference` names (a training workdir, a model checkpoint directory or a `.pth`, local or
    `gs://`). A `.pth` is converted in memory, its architecture inferred from the shapes unless `arch` is given;
    a checkpoint's architecture is its metadata's, and an `arch` that disagrees is an error. `model_kwargs` go to
    `get_model` (e.g. the compute `dtype`)."""
    kind, path = reference_kind(reference)
    if kind == TORCH_FILE:
        # torch is an optional dependency, needed only to read a .pth
        from jaxkd.pytorch.converter import import_torch

        imported = import_torch(path, arch=arch)
        variables, found_arch, num_classes, metadata = (imported.variables, imported.arch, imported.num_classes,
                                                         None)
        layout = imported.layout
    else:
        variables, metadata = read_model_checkpoint(absolute(path))
        layout = None
        found_arch, num_classes = metadata["arch"], int(metadata["num_classes"])
        if arch is not None and canonical_name(arch) != canonical_name(found_arch):
            raise UserError(f"{path}: holds a {found_arch}, not a {canonical_name(arch)}")
    return OpenedModel(get_model(found_arch, num_classes, **model_kwargs), variables, found_arch, num_classes,
                       metadata, input_normalization(metadata, layout), kind, path)
