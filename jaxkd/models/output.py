"""`ModelOutput`: what one forward pass of any architecture exposes to the distillation methods, and the pieces
every ported architecture shares to produce it."""

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.torch_layers import global_average_pool, linear_layer


class ModelOutput(NamedTuple):
    """Everything a distillation method may read from one forward pass, the same fields for every family.

    In RepDistiller's terms (`forward(x, is_feat=True, preact=...)` returns `feat, logits`): `stem` is feat[0],
    `features` are feat[1:-1], `preact_features` are feat[1:-1] with `preact=True`, `pooled` is feat[-1].
    The last three fields are what SDD and CAT-KD apply the classifier to: the map that is pooled into `pooled`
    and the classifier's parameters, read inside the model's apply so that gradients reach the student's
    classifier (`logits == pooled @ classifier_kernel + classifier_bias`, in eval mode and float32).
    """

    features: list  # the stage outputs, NHWC (the seed family: pre-activation residual sums)
    pooled: Any  # the penultimate vector the classifier reads, (B, C), float32
    logits: Any  # (B, num_classes), float32
    stem: Any = None  # the output of the stem, before the first stage
    preact_features: list | None = None  # the stage outputs before their final ReLU (see each family's docstring)
    pooled_map: Any = None  # (B, H, W, C), NHWC: the map global-average-pooled into `pooled`
    classifier_kernel: Any = None  # (C, num_classes): the classifier's weight, PyTorch's `fc.weight.T`
    classifier_bias: Any = None  # (num_classes,)


class FeatureModel(nn.Module):
    """Base of every architecture ported from RepDistiller: `forward(x, train) -> ModelOutput` is the model;
    calling it returns `(features, logits)` like the seed's models."""

    # On CPU, whether programs that run this architecture leave elementwise ops to XLA rather than YNNPACK
    # (`jaxkd.engine.compile_options`): measured faster for the depthwise-separable ones, whose depthwise
    # convolutions are shifted multiply-adds there (`jaxkd.models.grouped_conv`).
    cpu_elementwise_in_xla: ClassVar[bool] = False

    def __call__(self, x, train: bool = False):
        out = self.forward(x, train)
        return out.features, out.logits

    def forward(self, x, train: bool = False) -> ModelOutput:
        raise NotImplementedError


def classifier_output(classifier: nn.Dense, classifier_input, pooled_map, pooled, stem, features, preacts
                      ) -> ModelOutput:
    """The ModelOutput of a pass whose last map `pooled_map`, pooled into `pooled`, the Dense `classifier` reads
    (as `classifier_input`: `pooled`, or `pooled` after dropout); the classifier's parameters are read from it
    after the call, inside the apply, so that they carry gradients."""
    logits = classifier(classifier_input)
    params = classifier.variables["params"]
    return ModelOutput(features, pooled, logits.astype(jnp.float32), stem, preacts, pooled_map, params["kernel"],
                       params["bias"])


def classify(module: nn.Module, x, stem, features, preacts, name: str, **linear_kwargs) -> ModelOutput:
    """The common tail: global average pooling, the linear classifier `name` of `module` (its `num_classes` and
    `dtype`), and the ModelOutput of the pass."""
    pooled = global_average_pool(x)
    classifier = linear_layer(pooled.shape[-1], module.num_classes, name, dtype=module.dtype, **linear_kwargs)
    return classifier_output(classifier, pooled, x, pooled, stem, features, preacts)
