"""MLKD: the term (with the weak view's CE the engine adds, the whole of the official loss) and its gradients w.r.t.
the student's logits on both views against the PyTorch reference of the authors' `KD_ours` (tests/reference/
mlkd_losses.py), on logits shaped like a homogeneous and a heterogeneous pair's; the strong view's operations
against PIL's, the functions the official RandAugment calls; the settings it refuses. Its learning run:
tests/test_methods_learn.py; its recipe: tests/test_recipes.py."""

from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from ml_collections import ConfigDict
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from jaxkd.data import strong_augment
from jaxkd.engine.losses import cross_entropy
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.errors import UserError
from jaxkd.methods import Batch, get_method
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.reference.mlkd_losses import kd_ours_losses

REL = 1e-5
CE_WEIGHT = 0.1  # the recipe's gamma: the engine's CE on the weak view
# (batch, classes, the teacher's logit scale): a same-family teacher close to its student's spread; a stronger,
# more confident teacher, on an odd batch (the median is then one of the confidences: 3 of 5 masked)
PAIRS = {"homogeneous": (8, 100, 2.0), "heterogeneous": (5, 100, 6.0)}


def logits(z):
    return ModelOutput([], None, jnp.asarray(z))


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_mlkd_matches_the_authors_loss(pair, rng):
    """The CE of the weak view plus the term is the sum of `KD_ours`'s losses; its gradients w.r.t. the student's
    weak- and strong-view logits and its parts (kd, cc, bc) match too, at a temperature other than the default."""
    batch_size, classes, teacher_scale = PAIRS[pair]
    s_weak, s_strong = (rng.normal(0, 2, (batch_size, classes)).astype(np.float32) for _ in range(2))
    t_weak, t_strong = (rng.normal(0, teacher_scale, (batch_size, classes)).astype(np.float32) for _ in range(2))
    labels = rng.integers(0, classes, batch_size)
    method = get_method("mlkd", ConfigDict({"mlkd": {"temperature": 4.5}}))

    def loss(z_weak, z_strong):
        batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None, strong_student=logits(z_strong),
                      strong_teacher=logits(t_strong))
        out = method.term({}, {}, logits(z_weak), logits(t_weak), batch, True)
        return CE_WEIGHT * cross_entropy(z_weak, batch.labels) + out.term, out.metrics

    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(s_weak, s_strong)
    z_weak, z_strong = torch.tensor(s_weak, requires_grad=True), torch.tensor(s_strong, requires_grad=True)
    losses = kd_ours_losses(z_weak, z_strong, torch.tensor(t_weak), torch.tensor(t_strong), torch.tensor(labels),
                            temperature=4.5)
    total = sum(losses.values())
    total.backward()
    assert_close_scaled(value, total.detach().numpy(), REL, "loss")
    assert_close_scaled(grads[0], z_weak.grad.numpy(), REL, "grad weak")
    assert_close_scaled(grads[1], z_strong.grad.numpy(), REL, "grad strong")
    assert_close_scaled(metrics["kd_weak"] + metrics["kd_strong"], losses["loss_kd"].detach().numpy(), REL, "kd")
    assert_close_scaled(metrics["cc"], losses["loss_cc"].detach().numpy(), REL, "cc")
    assert_close_scaled(metrics["bc"], losses["loss_bc"].detach().numpy(), REL, "bc")
    assert min(float(v) for v in metrics.values()) > 0


def test_mlkd_refuses_what_it_has_no_form_for():
    with pytest.raises(UserError, match="logit_standardization"):
        get_method("mlkd", ConfigDict({"loss": {"logit_standardization": True}}))
    with pytest.raises(UserError, match="saliencymix"):
        get_method("mlkd", ConfigDict({"data": {"saliencymix": True}}))


def _cutout(image, fraction, center_x, center_y):
    """The official `Cutout`/`CutoutAbs`, its random centre given."""
    side, (width, height) = fraction * image.size[0], image.size
    x0, y0 = int(max(0, center_x - side / 2.0)), int(max(0, center_y - side / 2.0))
    image = image.copy()
    ImageDraw.Draw(image).rectangle((x0, y0, min(width, x0 + side), min(height, y0 + side)), (125, 123, 114))
    return image


def _affine(matrix):
    return lambda image, _: image.transform(image.size, Image.AFFINE, matrix(image))


# the official `augment_list()`'s operations as PIL calls them, with values inside their ranges
PIL_OPERATIONS = {
    "auto_contrast": (lambda image, _: ImageOps.autocontrast(image), [0.0]),
    "brightness": (lambda image, v: ImageEnhance.Brightness(image).enhance(v), [0.05, 0.37, 0.9123]),
    "color": (lambda image, v: ImageEnhance.Color(image).enhance(v), [0.05, 0.6]),
    "contrast": (lambda image, v: ImageEnhance.Contrast(image).enhance(v), [0.05, 0.6]),
    "equalize": (lambda image, _: ImageOps.equalize(image), [0.0]),
    "posterize": (lambda image, v: ImageOps.posterize(image, max(1, int(v))), [4.2, 5.9, 7.99]),
    "rotate": (lambda image, v: image.rotate(v), [-29.3, 7.7]),
    "sharpness": (lambda image, v: ImageEnhance.Sharpness(image).enhance(v), [0.05, 0.6]),
    "shear_x": (lambda image, v: _affine(lambda _: (1, v, 0, 0, 1, 0))(image, v), [-0.27, 0.13]),
    "shear_y": (lambda image, v: _affine(lambda _: (1, 0, 0, v, 1, 0))(image, v), [-0.27, 0.13]),
    "solarize": (lambda image, v: ImageOps.solarize(image, v), [0.0, 100.5, 255.9]),
    "translate_x": (lambda image, v: _affine(lambda im: (1, 0, v * im.size[0], 0, 1, 0))(image, v), [-0.27, 0.25]),
    "translate_y": (lambda image, v: _affine(lambda im: (1, 0, 0, 0, 1, v * im.size[1]))(image, v), [-0.27, 0.25]),
}


def test_strong_view_operations_match_pil(rng):
    """Every operation of the official RandAugment, bit for bit, on images of full, narrow and smooth ranges; and
    `apply_operation` reaches each by its index in the official list, at low + (high - low) * uniform."""
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images[1] = images[1] // 3 + 40  # a narrow range: autocontrast and equalize stretch it
    images[1, ..., 1] = np.minimum(images[1, ..., 1], 124)  # 40..124: PIL's float64 maps 124 to 254, not 255
    images[1, 0, :2, 1] = (40, 124)
    images[2] = np.cumsum(rng.integers(0, 3, (32, 32, 3)), axis=1).astype(np.uint8)  # smooth: sharpness, equalize
    operations = {op.__name__: op for op, _, _ in strong_augment.OPERATIONS}
    assert sorted(set(operations) - {"identity"}) == sorted(PIL_OPERATIONS)

    @jax.jit
    def outputs(images):  # one program: every operation at every value, and each reached by its index
        each = {name: [jax.vmap(operations[name], in_axes=(0, None))(images, jnp.float32(value)) for value in values]
                for name, (_, values) in PIL_OPERATIONS.items()}
        by_index = [jax.vmap(strong_augment.apply_operation, in_axes=(None, 0, None))(index, images, 0.3)
                    for index in range(len(strong_augment.OPERATIONS))]
        direct = [jax.vmap(op, in_axes=(0, None))(images, low + (high - low) * jnp.float32(0.3))
                  for op, low, high in strong_augment.OPERATIONS]
        return each, by_index, direct

    each, by_index, direct = outputs(images)
    for name, (reference, values) in PIL_OPERATIONS.items():
        for value, got in zip(values, each[name]):
            want = np.stack([np.asarray(reference(Image.fromarray(image), value)) for image in images])
            assert np.array_equal(np.asarray(got), want), f"{name} at {value}"
    for index, (got, want) in enumerate(zip(by_index, direct)):
        assert np.array_equal(got, want), strong_augment.OPERATIONS[index][0].__name__


def test_cutout_matches_the_official_cutout(rng):
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cut = jax.jit(strong_augment.cutout)
    for fraction, center_x, center_y in [(0.1, 3.3, 20.1), (0.49, 31.9, 0.2), (0.3333, 10.7, 29.5)]:
        want = np.asarray(_cutout(Image.fromarray(image), fraction, center_x, center_y))
        assert np.array_equal(np.asarray(cut(image, fraction, center_x, center_y)), want)
    assert np.array_equal(np.asarray(cut(image, 0.0, 5.0, 5.0)), image)


def test_strong_view_is_a_random_uint8_batch_of_the_same_shape(rng):
    """A new view per key, the same again for the same key, and not the images themselves."""
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    view = jax.jit(strong_augment.strong_view, static_argnames="padding")
    first, again, other = (np.asarray(view(jax.random.key(k), images)) for k in (0, 0, 1))
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert not np.array_equal(first, images)


class _TinyModel(nn.Module):
    """A BN and a classifier: enough to see which batches the BN's running statistics were updated with."""

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        pooled = nn.BatchNorm(use_running_average=not train, momentum=0.9)(jnp.mean(x, axis=(1, 2)))
        return ModelOutput([], pooled, nn.Dense(10)(pooled))


def test_the_step_runs_both_models_on_the_strong_view_in_official_order(rng):
    """`make_update` for MLKD: the student's BN statistics updated by the weak batch, then by the strong one
    (KD_ours's two train-mode calls, momentum 0.1 each: 0.09 weak + 0.1 strong from zero), and the term's strong
    CE that of the student's train-mode pass on the strong images."""
    config = ConfigDict({"loss": {"gamma": 0.1, "alpha": 0.0, "beta": 1.0, "kd_temperature": 4.0},
                         "optimizer": {}, "mlkd": {}})
    student, teacher = _TinyModel(), _TinyModel()
    weak, strong = (jnp.asarray(rng.normal(size=(6, 4, 4, 3)) + shift, jnp.float32) for shift in (0.0, 3.0))
    student_variables, teacher_variables = jit_once(lambda keys: [model.init(key, weak, method=_TinyModel.forward)
                                                                  for model, key in zip((student, teacher), keys)])(
        jax.random.split(jax.random.key(0)))
    setup = SimpleNamespace(student=student, method=get_method("mlkd", config), teacher=SimpleNamespace(model=teacher),
                            config=config, pipeline=SimpleNamespace(saliencymix=False), optimizer=optax.sgd(0.1))
    params = {"student": student_variables["params"], "method": {}}
    state = TrainState(jnp.zeros((), jnp.int32), params, {"student": student_variables["batch_stats"], "method": {}},
                       setup.optimizer.init(params), {}, jax.random.key_data(jax.random.key(2)))
    labels = jnp.asarray(rng.integers(0, 10, 6), jnp.int32)
    batch = Batch(weak, labels, jnp.arange(6), jax.random.key(3), strong_images=strong)
    state, metrics = jax.jit(make_update(setup))(state, batch, teacher_variables)
    running_mean = state.batch_stats["student"]["BatchNorm_0"]["mean"]
    assert_close_scaled(running_mean, 0.09 * jnp.mean(weak, (0, 1, 2)) + 0.1 * jnp.mean(strong, (0, 1, 2)), REL)
    strong_out, _ = student.apply(student_variables, strong, train=True, mutable=["batch_stats"],
                                  method=_TinyModel.forward)
    assert_close_scaled(metrics["mlkd_strong_ce"], cross_entropy(strong_out.logits, labels), REL, "strong CE")
