"""Checkpoint converter between the PyTorch seed (pytorch-kd, RepDistiller layouts) and jaxkd's Flax models.

    variables = convert.torch_to_flax("wrn40_2.pth")             # architecture inferred from the shapes
    state_dict = convert.flax_to_torch(variables, "wideresnet40_2")

Command line: `python -m convert import SRC.pth --out DIR` and `python -m convert export DIR --out OUT.pth`.
"""

from convert.converter import ImportedModel, flax_to_torch, import_torch, infer_architecture, torch_to_flax

__all__ = ["ImportedModel", "flax_to_torch", "import_torch", "infer_architecture", "torch_to_flax"]
