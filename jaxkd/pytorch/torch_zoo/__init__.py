"""PyTorch reference implementations of RepDistiller's architectures (`models/*.py` of HobbitLong/RepDistiller),
with RepDistiller's module names, so that their `state_dict()` keys are those of RepDistiller's files and its
released teachers load strictly. Independent of the Flax models: they are what the parity tests, `python -m
convert export --verify` and the tests' RepDistiller-style `.pth` files are made with.

Every model has RepDistiller's `forward(x, is_feat=False, preact=False)` and `forward_all(x)`, which returns
every feature of one pass (a second pass for preact=True would update the BN statistics twice in train mode).
"""

from typing import NamedTuple

import torch
import torch.nn as nn


class TorchOutput(NamedTuple):
    stem: torch.Tensor  # RepDistiller's feat[0]
    features: list  # feat[1:-1]
    preact_features: list  # feat[1:-1] with preact=True
    pooled: torch.Tensor  # feat[-1]
    logits: torch.Tensor


class RepDistillerForward(nn.Module):
    """RepDistiller's `forward(x, is_feat, preact)` on top of a subclass's `forward_all(x) -> TorchOutput`."""

    def forward_all(self, x) -> TorchOutput:
        raise NotImplementedError

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        out = self.forward_all(x)
        if not is_feat:
            return out.logits
        stages = out.preact_features if preact else out.features
        return [out.stem, *stages, out.pooled], out.logits


def run_stages(x, stages) -> tuple:
    """(last output, stage outputs, their pre-ReLU versions) of stages returning (output, pre-ReLU output)."""
    features, preacts = [], []
    for stage in stages:
        x, preact = stage(x)
        features.append(x)
        preacts.append(preact)
    return x, features, preacts


def init_kaiming_fan_out(model: nn.Module, linear_default: bool = True) -> None:
    """RepDistiller's initialization: convs N(0, 2 / (kH kW out)) (bias 0), BN 1/0; linears PyTorch's default
    (`linear_default`) or N(0, 0.01) with bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and not linear_default:
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
