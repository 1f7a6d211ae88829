"""Every family fills `ModelOutput.pooled_map`, `classifier_kernel` and `classifier_bias` (SDD and CAT-KD apply
the classifier to the last map): `pooled` is the mean of `pooled_map`, the logits are the classifier applied to
`pooled`, and the kernel is the model's parameter itself, so gradients reach it."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.methods.base import float32_outputs
from jaxkd.models import ModelOutput, all_architectures, get_model
from tests.helpers.assertions import assert_close_scaled

# The three tails that build a ModelOutput: the seed ResNet's, `classify` (every RepDistiller and ImageNet family
# but one) and torchvision's MobileNetV2 (dropout before its classifier)
TAILS = ("resnet8", "rd_resnet8", "tv_mobilenet_v2")
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def forward(model, variables) -> ModelOutput:
    return model.apply(variables, IMAGES, train=False, method=model.forward)


def random_variables(model, seed: int = 0) -> dict:
    """Random values of the model's variables (no init to compile): BN scales and variances around 1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), IMAGES)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(np.abs(rng.normal(size=s.shape)) * 0.2 + (len(s.shape) == 1),
                                              s.dtype), shapes)


def test_every_architecture_ends_in_a_tail_that_fills_the_fields():
    """Every registered architecture's forward returns its ModelOutput through `classify` or `classifier_output`
    (read from the source: tracing all 37 takes 25 s on the test machine)."""
    for arch in all_architectures():
        model = get_model(arch, 10)
        source = inspect.getsource(type(model).forward)
        assert "classify(" in source or "classifier_output(" in source, arch


@pytest.mark.parametrize("arch", TAILS)
def test_every_tail_returns_the_map_and_the_classifier_parameters(arch):
    model = get_model(arch, 10)
    out = jax.eval_shape(lambda v: forward(model, v), jax.eval_shape(model.init, jax.random.key(0), IMAGES))
    channels = out.pooled.shape[-1]
    assert out.pooled_map.ndim == 4 and out.pooled_map.shape[::3] == (2, channels)
    assert out.classifier_kernel.shape == (channels, 10) and out.classifier_bias.shape == (10,)


@pytest.mark.parametrize("arch", ["resnet8", "rd_resnet8"])  # the seed family's own tail; `classify`
def test_pooled_is_the_mean_of_the_map_and_logits_the_classifier_on_it(arch):
    model = get_model(arch, 10)
    variables = random_variables(model)

    def kernel_square_sum(v):  # one compile for the outputs and the gradient
        out = forward(model, v)
        return jnp.sum(out.classifier_kernel ** 2), out

    (_, out), gradient = jax.jit(jax.value_and_grad(kernel_square_sum, has_aux=True))(variables)
    assert_close_scaled(out.pooled, jnp.mean(out.pooled_map, axis=(1, 2)), 1e-6, f"{arch} pooled")
    assert_close_scaled(out.logits, out.pooled @ out.classifier_kernel + out.classifier_bias, 1e-5, f"{arch} logits")
    kernel_path = [path for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
                   if leaf.shape == out.classifier_kernel.shape and np.array_equal(leaf, out.classifier_kernel)]
    assert len(kernel_path) == 1
    kernel_gradient = dict(jax.tree_util.tree_leaves_with_path(gradient["params"]))[kernel_path[0]]
    assert_close_scaled(kernel_gradient, 2 * out.classifier_kernel, 1e-6, f"{arch} kernel gradient")


def test_float32_outputs_keeps_the_fields_a_pass_left_none():
    out = ModelOutput([jnp.ones((1, 2, 2, 3), jnp.bfloat16)], jnp.ones((1, 3), jnp.bfloat16),
                      jnp.ones((1, 4), jnp.bfloat16))
    cast = float32_outputs(out)
    assert cast.features[0].dtype == cast.pooled.dtype == jnp.float32
    assert cast.pooled_map is None and cast.classifier_kernel is None and cast.stem is None
