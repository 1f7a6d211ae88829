"""Every architecture's size: parameters and forward GMACs per 32x32 image, and for the ImageNet architectures
per 224x224 image with 1000 classes, as their papers and torchvision list them (`python -m jaxkd.models`).

GMACs (billions of multiply-accumulates; one is 2 FLOPs) as the distillation papers count them, which call them
"FLOPs": multiply-accumulates of the convolutions and linear
layers (BN, ReLU, pooling and additions left out), read off one abstract trace of `init`, which runs the
eval-mode forward pass (nothing is computed). Parameters are the trainable ones (conv and linear weights and
biases, BN scales and biases), as PyTorch's `sum(p.numel() for p in model.parameters())` counts them.
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models import IMAGENET_ARCHITECTURES, all_architectures, canonical_name, get_model


class ModelSize(NamedTuple):
    arch: str
    parameters: int
    gmacs: float  # multiply-accumulates per image, in billions (FLOPs = 2 x MACs)


def model_size(arch: str, num_classes: int = 100, image_size: int = 32) -> ModelSize:
    """The size of `arch` with `num_classes` outputs on `image_size` x `image_size` RGB images."""
    arch = canonical_name(arch)
    macs = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables["params"]["kernel"]
            # every output value is one dot product over the kernel's input side (all but its last axis)
            macs.append(math.prod(out.shape[1:]) * math.prod(kernel.shape[:-1]))
        return out

    model = get_model(arch, num_classes)
    with nn.intercept_methods(count):  # init runs the eval-mode forward pass once
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    parameters = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
    return ModelSize(arch, parameters, sum(macs) / 1e9)


def size_table(num_classes: int = 100) -> str:
    """Markdown tables of every architecture: name, parameters (millions), GMACs per 32x32 image with
    `num_classes` outputs; then the ImageNet architectures per 224x224 image with 1000 classes."""
    header = ["| architecture | parameters | GMACs |", "|---|---:|---:|"]
    rows = [*header]
    for arch in all_architectures():
        size = model_size(arch, num_classes)
        rows.append(f"| `{size.arch}` | {size.parameters / 1e6:.2f}M | {size.gmacs:.3f} |")
    rows += ["", "ImageNet architectures, 224x224 images, 1000 classes:", "", *header]
    for arch in IMAGENET_ARCHITECTURES:
        size = model_size(arch, 1000, image_size=224)
        rows.append(f"| `{size.arch}` | {size.parameters / 1e6:.2f}M | {size.gmacs:.3f} |")
    return "\n".join(rows)
