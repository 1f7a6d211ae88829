"""Checkpoint converter between PyTorch (the seed's pytorch-kd layout, RepDistiller's layout) and jaxkd's Flax
models, for every architecture of `jaxkd.models`.

    imported = convert.import_torch("ckpt_epoch_240.pth")       # architecture inferred from keys and shapes
    state_dict = convert.flax_to_torch(imported.variables, imported.arch)   # the architecture's own layout

Command line: `python -m convert import SRC.pth --out DIR` and `python -m convert export DIR --out OUT.pth`.
"""

from jaxkd.pytorch.converter import (ImportedModel, flax_to_torch, import_torch, infer_architecture, native_layout,
                                     torch_to_flax)

__all__ = ["ImportedModel", "flax_to_torch", "import_torch", "infer_architecture", "native_layout", "torch_to_flax"]
