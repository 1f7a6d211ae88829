"""FitNets: the hint term and its regressor against RepDistiller's ConvReg + HintLoss
(tests/reference/repdistiller_losses.py), the regressor for each shape rule and for pairs of the model family,
and a hint layer out of range refused before any work. The config learns in tests/test_methods_learn.py (which
also checks that the regressor's batch statistics ran); a method module's exact resume is
tests/test_method_byot.py's (heads with BN) and tests/test_method_crd.py's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import default, fitnet_wrn
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.errors import UserError
from jaxkd.methods import Probe, get_method
from jaxkd.models import ModelOutput, get_model
from jaxkd.models.heads import STRIDE2, TRANSPOSE, VALID, ConvReg, ConvTranspose4x4Stride2
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.runs import on_digits, save_random_teacher
from tests.helpers.torch_references import nchw, nhwc, randomize_batchnorms
from tests.reference.repdistiller_losses import ConvReg as TorchConvReg
from tests.reference.repdistiller_losses import HintLoss

REL = 1e-5  # float32 parity: max |jax - torch| <= REL * max |torch| for every compared tensor


def outputs(*features) -> ModelOutput:
    return ModelOutput(list(features), None, None)


def stages(hint_feature) -> ModelOutput:
    """A ModelOutput whose second stage output (FitNets' hint) is `hint_feature`."""
    return outputs(None, hint_feature, None)


def random_feature(rng, shape_nhwc) -> np.ndarray:
    return rng.normal(size=shape_nhwc).astype(np.float32)


def randomized_torch_conv_reg(s_nchw, t_nchw) -> TorchConvReg:
    reg = TorchConvReg(s_nchw, t_nchw)
    randomize_batchnorms(reg)
    return reg


def flax_variables_of(reg: TorchConvReg) -> dict:
    """The converter's mapping: Conv2d OIHW -> HWIO; ConvTranspose2d (in, out, kH, kW) -> (kH, kW, in, out)."""
    weight = reg.conv.weight.detach().numpy()
    kernel = weight.transpose(2, 3, 0, 1) if isinstance(reg.conv, torch.nn.ConvTranspose2d) else \
        weight.transpose(2, 3, 1, 0)
    as_np = lambda t: t.detach().numpy().copy()  # noqa: E731
    return {"params": {"conv": {"kernel": kernel.copy(), "bias": as_np(reg.conv.bias)},
                       "bn": {"scale": as_np(reg.bn.weight), "bias": as_np(reg.bn.bias)}},
            "batch_stats": {"bn": {"mean": as_np(reg.bn.running_mean), "var": as_np(reg.bn.running_var)}}}


# Student and teacher hint shapes, NHWC, for each branch of the shape rule.
BRANCHES = {
    STRIDE2: ((4, 16, 16, 8), (4, 8, 8, 12)),
    TRANSPOSE: ((4, 8, 8, 8), (4, 16, 16, 12)),
    VALID: ((4, 8, 8, 8), (4, 8, 8, 12)),  # 1x1
    VALID + "_3x3": ((4, 10, 10, 6), (4, 8, 8, 5)),
}


@pytest.mark.parametrize("branch", list(BRANCHES))
def test_fitnets_matches_pytorch_hint_loss_with_conv_reg(branch, rng):
    """Regressor output and running statistics in train mode, the loss, and the gradients w.r.t. the student
    feature and the regressor's parameters, against RepDistiller's ConvReg + HintLoss with copied weights."""
    s_shape, t_shape = BRANCHES[branch]
    f_s, f_t = random_feature(rng, s_shape), random_feature(rng, t_shape)
    to_nchw = lambda shape: (shape[0], shape[3], shape[1], shape[2])  # noqa: E731
    torch.manual_seed(int(rng.integers(1 << 31)))
    reg = randomized_torch_conv_reg(to_nchw(s_shape), to_nchw(t_shape)).train()

    method = get_method("fitnet", None)
    init_shapes = jax.eval_shape(lambda key: method.init(key, Probe(stages(jnp.asarray(f_s)), stages(jnp.asarray(f_t)),
                                                                    None, None, 10)).variables, jax.random.PRNGKey(0))
    variables = flax_variables_of(reg)
    assert jax.tree.map(np.shape, init_shapes) == jax.tree.map(np.shape, variables)  # same layout
    module = method.module(stages(f_s), stages(f_t))
    assert module.kind == branch.split("_3x3")[0]

    x = nchw(f_s).requires_grad_(True)
    y_torch = reg(x)
    loss_torch = HintLoss()(y_torch, nchw(f_t))
    loss_torch.backward()

    # jitted, as the term below: one compile each (tests/helpers/compile_once.py)
    y, updates = jit_once(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables,
                                                                                            jnp.asarray(f_s))
    assert_close_scaled(y, nhwc(y_torch), REL, "regressor output")
    assert_close_scaled(updates["batch_stats"]["bn"]["mean"], reg.bn.running_mean.numpy(), REL, "running mean")
    assert_close_scaled(updates["batch_stats"]["bn"]["var"], reg.bn.running_var.numpy(), REL, "running var")

    def loss_fn(params, feature):
        out = method.term({"params": params, "batch_stats": variables["batch_stats"]}, {}, stages(feature),
                          stages(jnp.asarray(f_t)), None, True)
        return out.term, out.batch_stats

    (loss, batch_stats), (grad_params, grad_feature) = jit_once(jax.value_and_grad(loss_fn, (0, 1), has_aux=True))(
        variables["params"], jnp.asarray(f_s))
    assert loss == pytest.approx(loss_torch.item(), rel=REL)
    assert_close_scaled(batch_stats["bn"]["var"], reg.bn.running_var.numpy(), REL, "term's batch_stats")
    assert_close_scaled(grad_feature, nhwc(x.grad), REL, "d loss / d student feature")
    assert_close_scaled(grad_params["conv"]["kernel"], kernel_grad_as_flax(reg), REL, "d loss / d conv kernel")
    # A conv bias before train-mode BN is cancelled by the mean subtraction: both gradients are rounding noise.
    kernel_scale = float(np.abs(kernel_grad_as_flax(reg)).max())
    assert np.abs(np.asarray(grad_params["conv"]["bias"])).max() <= REL * kernel_scale
    assert reg.conv.bias.grad.abs().max().item() <= REL * kernel_scale
    assert_close_scaled(grad_params["bn"]["scale"], reg.bn.weight.grad.numpy(), REL, "d loss / d bn scale")
    assert_close_scaled(grad_params["bn"]["bias"], reg.bn.bias.grad.numpy(), REL, "d loss / d bn bias")


def kernel_grad_as_flax(reg: TorchConvReg) -> np.ndarray:
    grad = reg.conv.weight.grad.numpy()
    return grad.transpose(2, 3, 0, 1) if isinstance(reg.conv, torch.nn.ConvTranspose2d) else grad.transpose(2, 3, 1, 0)


@pytest.mark.parametrize("in_hw", [(5, 7), (8, 8)])
def test_transposed_conv_matches_torch_conv_transpose2d(in_hw, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    conv = torch.nn.ConvTranspose2d(6, 9, kernel_size=4, stride=2, padding=1)
    x = random_feature(rng, (3, *in_hw, 6))
    y = ConvTranspose4x4Stride2(9).apply(
        {"params": {"kernel": conv.weight.detach().numpy().transpose(2, 3, 0, 1),
                    "bias": conv.bias.detach().numpy()}}, jnp.asarray(x))
    assert y.shape == (3, 2 * in_hw[0], 2 * in_hw[1], 9)
    assert_close_scaled(y, nhwc(conv(nchw(x))), REL, "ConvTranspose2d")


@pytest.mark.parametrize("branch", [STRIDE2, TRANSPOSE, VALID])
def test_conv_reg_init_is_pytorch_default(branch):
    """Weight and bias U(+-1/sqrt(fan_in)) with PyTorch's fan_in (for ConvTranspose2d: out channels * k * k);
    BN weight 1, bias 0, running mean 0, var 1."""
    s_shape, t_shape = {STRIDE2: ((2, 16, 16, 64), (2, 8, 8, 96)), TRANSPOSE: ((2, 8, 8, 64), (2, 16, 16, 96)),
                        VALID: ((2, 8, 8, 64), (2, 8, 8, 96))}[branch]
    to_nchw = lambda shape: (shape[0], shape[3], shape[1], shape[2])  # noqa: E731
    torch_weight = TorchConvReg(to_nchw(s_shape), to_nchw(t_shape)).conv.weight
    bound = 1.0 / math.sqrt(torch.nn.init._calculate_fan_in_and_fan_out(torch_weight)[0])
    variables = ConvReg.between(s_shape, t_shape).init(jax.random.PRNGKey(1), jnp.zeros(s_shape), train=False)
    kernel, bias = (np.asarray(variables["params"]["conv"][k]) for k in ("kernel", "bias"))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert abs(kernel.std() - bound / math.sqrt(3)) < 0.02 * bound  # the std of U(-b, b)
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.8 * bound
    assert np.all(np.asarray(variables["params"]["bn"]["scale"]) == 1)
    assert np.all(np.asarray(variables["batch_stats"]["bn"]["var"]) == 1)


@pytest.mark.parametrize("student_shape, teacher_shape, kind, kernel_size", [
    ((2, 32, 32, 16), (2, 16, 16, 32), STRIDE2, (3, 3)),
    ((2, 8, 8, 64), (2, 16, 16, 32), TRANSPOSE, (4, 4)),
    ((2, 16, 16, 32), (2, 16, 16, 64), VALID, (1, 1)),
    ((2, 12, 9, 8), (2, 8, 8, 8), VALID, (5, 2)),
])
def test_conv_reg_shape_rule(student_shape, teacher_shape, kind, kernel_size):
    module = ConvReg.between(student_shape, teacher_shape)
    assert (module.kind, module.kernel_size, module.features) == (kind, kernel_size, teacher_shape[-1])
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros(student_shape), train=False)
    assert module.apply(variables, jnp.ones(student_shape), train=False).shape == teacher_shape


def test_conv_reg_refuses_unsupported_shapes_naming_them():
    with pytest.raises(UserError, match=r"\(2, 4, 4, 8\) onto a teacher feature of shape \(2, 16, 16, 8\)"):
        ConvReg.between((2, 4, 4, 8), (2, 16, 16, 8))


def probe_shapes(arch: str):
    """The stage output shapes of `arch` on a CIFAR-sized batch, without computing anything."""
    model = get_model(arch, 100)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x, method=model.forward), x)
    return [f.shape for f in out.features]


@pytest.mark.parametrize("teacher, student, in_channels, out_channels", [
    ("wideresnet40_2", "wideresnet16_2", 64, 64),
    ("wideresnet40_2", "wideresnet40_1", 32, 64),
    ("resnet56", "resnet20", 32, 32),
    ("resnet20", "resnet8", 32, 32),
    ("wideresnet28_4", "resnet8", 32, 128),
])
def test_fitnet_regressor_for_pairs_of_the_family(teacher, student, in_channels, out_channels):
    """Same-family CIFAR pairs share spatial sizes: the hint regressor is a 1x1 conv from the student's
    stage-2 channels to the teacher's."""
    s_feature, t_feature = (jnp.zeros(probe_shapes(arch)[1]) for arch in (student, teacher))
    method = get_method("fitnet", fitnet_wrn.get_config())
    assert method.module(stages(s_feature), stages(t_feature)).kind == VALID
    init = method.init(jax.random.PRNGKey(0), Probe(stages(s_feature), stages(t_feature), None, None, 100))
    assert init.variables["params"]["conv"]["kernel"].shape == (1, 1, in_channels, out_channels)
    assert init.variables["batch_stats"]["bn"]["mean"].shape == (out_channels,)


def test_fitnet_hint_layer_from_config_and_default():
    assert get_method("fitnet", default.get_config()).settings == {"hint_layer": 1}  # no `fitnet` section
    config = fitnet_wrn.get_config()
    config.fitnet.hint_layer = 2
    assert get_method("fitnet", config).settings["hint_layer"] == 2
    config.fitnet.hint_layer = 3
    feature = jnp.zeros((2, 8, 8, 4))
    with pytest.raises(UserError, match="fitnet.hint_layer 3 is out of range"):
        get_method("fitnet", config).init(jax.random.PRNGKey(0), Probe(outputs(feature, feature, feature),
                                                          outputs(feature, feature, feature), None, None, 10))


def test_a_hint_layer_out_of_range_is_refused_before_the_workdir_exists(tmp_path):
    """The method's check needs the models' shapes, so it runs as the state is made: still before the workdir
    is created, which would otherwise hold this run's config.json and refuse the corrected command."""
    config = on_digits(fitnet_wrn.get_config(), epochs=1)
    config.teacher.checkpoint = str(save_random_teacher(tmp_path / "resnet8.pth", "resnet8"))
    config.teacher.arch = "resnet8"
    config.fitnet.hint_layer = 3
    with pytest.raises(UserError, match="fitnet.hint_layer 3 is out of range"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
