"""torchvision's pure-Python modules as the tests' reference, loaded without its C extension
(jaxkd/pytorch/torchvision_modules.py says why)."""

from jaxkd.pytorch.torchvision_modules import torchvision_module as load_torchvision_module

__all__ = ["load_torchvision_module"]
