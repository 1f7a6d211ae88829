"""`ModelOutput`: what one forward pass of any architecture exposes to the distillation methods, and the pieces
every ported architecture shares to produce it."""

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.torch_layers import global_average_pool, linear


class ModelOutput(NamedTuple):
    """Everything a distillation method may read from one forward pass, the same fields for every family.

    In RepDistiller's terms (`forward(x, is_feat=True, preact=...)` returns `feat, logits`): `stem` is feat[0],
    `features` are feat[1:-1], `preact_features` are feat[1:-1] with `preact=True`, `pooled` is feat[-1].
    """

    features: list  # the stage outputs, NHWC (the seed family: pre-activation residual sums)
    pooled: Any  # the penultimate vector the classifier reads, (B, C), float32
    logits: Any  # (B, num_classes), float32
    stem: Any = None  # the output of the stem, before the first stage
    preact_features: list | None = None  # the stage outputs before their final ReLU (see each family's docstring)


class FeatureModel(nn.Module):
    """Base of every architecture ported from RepDistiller: `forward(x, train) -> ModelOutput` is the model;
    calling it returns `(features, logits)` like the seed's models."""

    def __call__(self, x, train: bool = False):
        out = self.forward(x, train)
        return out.features, out.logits

    def forward(self, x, train: bool = False) -> ModelOutput:
        raise NotImplementedError


def classify(module: nn.Module, x, stem, features, preacts, name: str, **linear_kwargs) -> ModelOutput:
    """The common tail: global average pooling, the linear classifier `name` of `module` (its `num_classes` and
    `dtype`), and the ModelOutput of the pass."""
    pooled = global_average_pool(x)
    logits = linear(pooled, module.num_classes, name, dtype=module.dtype, **linear_kwargs)
    return ModelOutput(features, pooled, logits.astype(jnp.float32), stem, preacts)
