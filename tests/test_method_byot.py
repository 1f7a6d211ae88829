"""BYOT: its heads and loss against a PyTorch reference (tests/reference/byot_loss.py: outputs, running statistics,
loss, gradients), the heads' init and shape rule over the model family, the config, and BYOT end to end through
the engine on digits (learning, per-head metrics and evaluation, exact resume with the heads, the exported
backbone)."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from ml_collections import ConfigDict

from configs import byot_wrn, default
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.losses import cross_entropy
from jaxkd.errors import UserError
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.byot import BYOT, HEAD_NAMES
from jaxkd.models import ModelOutput, get_model
from jaxkd.models.heads import BYOTHead
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.assertions import assert_bitwise_equal, assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.runs import final_params, on_digits
from tests.helpers.torch_references import nchw, nhwc, randomize_batchnorms
from tests.reference.byot_loss import ShallowHead, byot_total_loss

REL = 1e-5  # float32 parity: max |jax - torch| <= REL * max |torch| for every compared tensor


def recipe_method() -> BYOT:
    return get_method("byot", byot_wrn.get_config())


def random_outputs(rng, batch_size, stage_shapes, num_classes) -> ModelOutput:
    """Stage outputs (pre-activation sums: any sign), a post-ReLU pooled feature and logits, as numpy."""
    features = [rng.normal(size=(batch_size, *shape)).astype(np.float32) for shape in stage_shapes]
    pooled = np.abs(rng.normal(size=(batch_size, stage_shapes[-1][-1]))).astype(np.float32)
    pooled[pooled < 0.3] = 0  # some exact zeros, as after a ReLU
    logits = (2 * rng.normal(size=(batch_size, num_classes))).astype(np.float32)
    return ModelOutput(features, pooled, logits)


def as_jax(out: ModelOutput) -> ModelOutput:
    return ModelOutput([jnp.asarray(f) for f in out.features], jnp.asarray(out.pooled), jnp.asarray(out.logits))


def randomized_torch_head(channel_in, channel_out, k, num_classes) -> ShallowHead:
    head = ShallowHead(channel_in, channel_out, k, num_classes)
    randomize_batchnorms(head)
    return head


# ShallowHead.bottleneck's Sequential indices of the three convs and BNs.
CONVS, BNS = {"conv1": 0, "conv2": 3, "conv3": 6}, {"bn1": 1, "bn2": 4, "bn3": 7}


def flax_variables_of(head: ShallowHead) -> dict:
    """BYOT-U's layout onto BYOTHead's: Conv2d OIHW -> HWIO, Linear (out, in) -> (in, out)."""
    as_np = lambda t: t.detach().numpy().copy()  # noqa: E731
    params, stats = {}, {}
    for name, i in CONVS.items():
        conv = head.bottleneck[i]
        params[name] = {"kernel": as_np(conv.weight).transpose(2, 3, 1, 0), "bias": as_np(conv.bias)}
    for name, i in BNS.items():
        bn = head.bottleneck[i]
        params[name] = {"scale": as_np(bn.weight), "bias": as_np(bn.bias)}
        stats[name] = {"mean": as_np(bn.running_mean), "var": as_np(bn.running_var)}
    params["fc"] = {"kernel": as_np(head.middle_fc.weight).T, "bias": as_np(head.middle_fc.bias)}
    return {"params": params, "batch_stats": stats}


def torch_grads_as_flax(head: ShallowHead) -> dict:
    grad = lambda t: t.grad.numpy()  # noqa: E731
    grads = {name: {"kernel": grad(head.bottleneck[i].weight).transpose(2, 3, 1, 0),
                    "bias": grad(head.bottleneck[i].bias)} for name, i in CONVS.items()}
    grads.update({name: {"scale": grad(head.bottleneck[i].weight), "bias": grad(head.bottleneck[i].bias)}
                  for name, i in BNS.items()})
    grads["fc"] = {"kernel": grad(head.middle_fc.weight).T, "bias": grad(head.middle_fc.bias)}
    return grads


# Stage output shapes (H, W, C): resnet8 / WRN-x-1 on CIFAR, and a WRN-x-2 on 24x24 inputs (k = 4 and 2 again).
STAGES = {"width1_cifar": [(32, 32, 16), (16, 16, 32), (8, 8, 64)],
          "width2_24px": [(24, 24, 32), (12, 12, 64), (6, 6, 128)]}


@pytest.mark.parametrize("stages", list(STAGES))
def test_heads_and_loss_match_pytorch(stages, rng):
    """Train mode: both heads' logits, features and running statistics, the total loss (engine's 0.9 * CE of the
    deepest + the term, beta 1) and its gradients w.r.t. the stage outputs, the deepest logits and pooled feature,
    and every head parameter, against BYOT-U's heads and loss with copied weights. Eval mode: eval_logits."""
    batch_size, num_classes, shapes = 6, 10, STAGES[stages]
    out_np = random_outputs(rng, batch_size, shapes, num_classes)
    labels = rng.integers(0, num_classes, batch_size)
    channels = shapes[-1][-1]

    method = recipe_method()
    init_shapes = jax.eval_shape(lambda key: method.init(key, Probe(as_jax(out_np), None, None, None,
                                                                      num_classes)).variables, jax.random.PRNGKey(0))
    torch.manual_seed(int(rng.integers(1 << 31)))
    torch_heads = [randomized_torch_head(shapes[s][-1], channels, shapes[s][0] // shapes[-1][0], num_classes)
                   for s in range(2)]
    copied = [flax_variables_of(head) for head in torch_heads]
    variables = {"params": {name: v["params"] for name, v in zip(HEAD_NAMES, copied)},
                 "batch_stats": {name: v["batch_stats"] for name, v in zip(HEAD_NAMES, copied)}}
    assert jax.tree.map(np.shape, init_shapes) == jax.tree.map(np.shape, variables)  # same layout

    # PyTorch: BYOT-U's total loss, train mode.
    x = [nchw(f).requires_grad_(True) for f in out_np.features]
    deepest_logits = torch.tensor(out_np.logits, requires_grad=True)
    deepest_pooled = torch.tensor(out_np.pooled, requires_grad=True)
    head_outputs = [head.train()(x[s]) for s, head in enumerate(torch_heads)]
    loss_torch = byot_total_loss(deepest_logits, deepest_pooled, head_outputs, torch.tensor(labels))
    loss_torch.backward()

    config = byot_wrn.get_config()
    batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None)

    def total_loss(params, out):
        term = method.term({"params": params, "batch_stats": variables["batch_stats"]}, {}, out, None, batch, True)
        return config.loss.gamma * cross_entropy(out.logits, batch.labels) + config.loss.beta * term.term, term

    # jitted, as every JAX computation below: one compile each (tests/helpers/compile_once.py)
    (loss, term), (grad_params, grad_out) = jit_once(jax.value_and_grad(total_loss, (0, 1), has_aux=True))(
        variables["params"], as_jax(out_np))
    assert loss == pytest.approx(loss_torch.item(), rel=REL)
    for s, (name, head) in enumerate(zip(HEAD_NAMES, torch_heads)):
        head_module = BYOTHead(channels // 4, channels, shapes[s][0] // shapes[-1][0], num_classes)
        logits, feature = jit_once(lambda v, x, head_module=head_module: head_module.apply(
            v, x, train=True, mutable=["batch_stats"])[0])(copied[s], jnp.asarray(out_np.features[s]))
        assert_close_scaled(logits, head_outputs[s][0].detach().numpy(), REL, f"{name} logits")
        assert_close_scaled(feature, head_outputs[s][1].detach().numpy()[:, :, 0, 0], REL, f"{name} feature")
        for bn_name, i in BNS.items():
            for stat, reference in (("mean", head.bottleneck[i].running_mean), ("var", head.bottleneck[i].running_var)):
                assert_close_scaled(term.batch_stats[name][bn_name][stat], reference.numpy(), REL,
                                    f"{name} {bn_name} running {stat}")
        reference_grads = torch_grads_as_flax(head)
        for layer in reference_grads:
            for leaf in reference_grads[layer]:
                if layer in CONVS and leaf == "bias":
                    # A conv bias before train-mode BN is cancelled by the mean subtraction: rounding noise.
                    scale = REL * float(np.abs(reference_grads[layer]["kernel"]).max())
                    assert np.abs(np.asarray(grad_params[name][layer][leaf])).max() <= scale
                    assert np.abs(reference_grads[layer][leaf]).max() <= scale
                else:
                    assert_close_scaled(grad_params[name][layer][leaf], reference_grads[layer][leaf], REL,
                                        f"d loss / d {name}/{layer}/{leaf}")
    for s in range(2):
        assert_close_scaled(grad_out.features[s], nhwc(x[s].grad), REL, f"d loss / d stage {s + 1} output")
    assert x[2].grad is None and not np.any(np.asarray(grad_out.features[2]))  # no head reads the last stage
    assert_close_scaled(grad_out.logits, deepest_logits.grad.numpy(), REL, "d loss / d deepest logits")
    assert not np.any(np.asarray(grad_out.pooled)) and deepest_pooled.grad is None  # stop-gradient

    # Eval mode: running statistics (the copied ones), as the engine's evaluation calls it.
    extra = jit_once(method.eval_logits)(variables, as_jax(out_np), None)
    assert sorted(extra) == ["head1", "head2"]
    with torch.no_grad():
        for s, (name, head) in enumerate(zip(HEAD_NAMES, torch_heads)):
            head.eval()
            for bn_name, i in BNS.items():  # back to the running statistics JAX holds
                head.bottleneck[i].running_mean.copy_(torch.tensor(variables["batch_stats"][name][bn_name]["mean"]))
                head.bottleneck[i].running_var.copy_(torch.tensor(variables["batch_stats"][name][bn_name]["var"]))
            assert_close_scaled(extra[name], head(x[s])[0].numpy(), REL, f"{name} eval logits")


def test_term_metrics_are_the_unweighted_losses(rng):
    """The logged metrics are each head's CE, soft-CE (no T^2) and feature loss; the term is their weighted sum."""
    shapes = STAGES["width1_cifar"]
    out = as_jax(random_outputs(rng, 4, shapes, 10))
    method = recipe_method()
    batch = Batch(None, jnp.asarray(rng.integers(0, 10, 4), jnp.int32), None, None)
    result = jit_once(lambda key: method.term(method.initialize(key, Probe(out, None, batch, None, 10)).variables, {},
                                             out, None, batch, True))(jax.random.PRNGKey(1))  # one compile
    assert sorted(result.metrics) == sorted(method.metric_names) and len(method.metric_names) == 6
    m = {k: float(v) for k, v in result.metrics.items()}
    expected = sum(0.9 * m[f"{h}_ce"] + 0.1 * 9 * m[f"{h}_soft_ce"] + 1e-6 * m[f"{h}_feature"] for h in HEAD_NAMES)
    assert float(result.term) == pytest.approx(expected, rel=1e-6)
    assert all(m[f"{h}_ce"] > 0 and m[f"{h}_soft_ce"] > 0 and m[f"{h}_feature"] > 0 for h in HEAD_NAMES)


def test_heads_use_the_mixed_cross_entropy_under_saliencymix(rng):
    out = as_jax(random_outputs(rng, 4, STAGES["width1_cifar"], 10))
    method = recipe_method()
    labels = jnp.asarray([0, 1, 2, 3], jnp.int32)
    partners = jnp.asarray([2, 3, 0, 1], jnp.int32)
    batches = (Batch(None, labels, None, None), Batch(None, labels[partners], None, None),
               Batch(None, labels, None, None, partners, 0.25))

    @jit_once  # one compile
    def metrics(key):
        variables = method.init(key, Probe(out, None, None, None, 10)).variables
        return [method.term(variables, {}, out, None, batch, True).metrics for batch in batches]

    plain, swapped, mixed = metrics(jax.random.PRNGKey(2))
    for head in HEAD_NAMES:
        assert float(mixed[f"{head}_ce"]) == pytest.approx(
            0.25 * float(plain[f"{head}_ce"]) + 0.75 * float(swapped[f"{head}_ce"]), rel=1e-6)


def test_head_init_is_byot_us():
    """Conv weights kaiming-normal (fan_out, relu), conv biases and the linear layer U(+-1/sqrt(fan_in)),
    BN 1/0 with running statistics 0/1."""
    head = BYOTHead(bottleneck=64, features=256, stride=2, num_classes=100)
    variables = jit_once(lambda key: head.init(key, jnp.zeros((2, 16, 16, 128)), train=False))(jax.random.PRNGKey(3))
    params, stats = variables["params"], variables["batch_stats"]
    for name, (k, c_in, c_out) in {"conv1": (1, 128, 64), "conv2": (2, 64, 64), "conv3": (1, 64, 256)}.items():
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        assert kernel.shape == (k, k, c_in, c_out)
        std = math.sqrt(2.0 / (k * k * c_out))
        assert abs(kernel.std() / std - 1) < 0.05 and np.abs(kernel).max() > 3 * std  # normal, not truncated
        bound = 1 / math.sqrt(k * k * c_in)
        assert bound * 0.9 < np.abs(bias).max() <= bound
    for name in ("bn1", "bn2", "bn3"):
        assert np.all(np.asarray(params[name]["scale"]) == 1) and not np.any(np.asarray(params[name]["bias"]))
        assert not np.any(np.asarray(stats[name]["mean"])) and np.all(np.asarray(stats[name]["var"]) == 1)
    bound = 1 / math.sqrt(256)
    for leaf in ("kernel", "bias"):
        values = np.asarray(params["fc"][leaf])
        assert 0.9 * bound < np.abs(values).max() <= bound
    assert abs(np.asarray(params["fc"]["kernel"]).std() - bound / math.sqrt(3)) < 0.03 * bound


def probe_of(arch: str, num_classes: int = 100) -> Probe:
    """The shapes of `arch`'s outputs on a CIFAR-sized batch, without computing anything."""
    model = get_model(arch, num_classes)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x, method=model.forward), x)
    return Probe(out, None, None, None, num_classes)


@pytest.mark.parametrize("arch, channels", [("resnet8", 64), ("wideresnet16_2", 128), ("wideresnet28_4", 256)])
def test_heads_follow_the_model(arch, channels):
    """Head s: k = stage size / last stage size (4, 2), 64k output channels, 64k/4 bottleneck."""
    probe = probe_of(arch)
    heads = recipe_method().heads(probe.student.features, probe.student.pooled, 100)
    assert [(h.bottleneck, h.features, h.stride, h.num_classes) for h in heads] == \
        [(channels // 4, channels, 4, 100), (channels // 4, channels, 2, 100)]
    shapes = jax.eval_shape(lambda out: recipe_method().init(jax.random.PRNGKey(0), probe._replace(student=out)),
                            probe.student).variables
    assert shapes["params"]["head1"]["conv1"]["kernel"].shape == (1, 1, channels // 4, channels // 4)
    assert shapes["params"]["head2"]["conv1"]["kernel"].shape == (1, 1, channels // 2, channels // 4)
    assert shapes["params"]["head1"]["conv2"]["kernel"].shape == (4, 4, channels // 4, channels // 4)
    assert shapes["params"]["head2"]["fc"]["kernel"].shape == (channels, 100)
    assert sorted(shapes["params"]["head1"]) == ["bn1", "bn2", "bn3", "conv1", "conv2", "conv3", "fc"]


def test_heads_refuse_unsupported_shapes():
    method = recipe_method()
    pooled = jnp.zeros((2, 64))
    with pytest.raises(UserError, match="3 stages"):
        method.heads([jnp.zeros((2, 8, 8, 16))] * 2, pooled, 10)
    with pytest.raises(UserError, match=r"multiple of the last stage's \(8\)"):
        method.heads([jnp.zeros((2, 12, 12, 16)), jnp.zeros((2, 16, 16, 32)), jnp.zeros((2, 8, 8, 64))], pooled, 10)


def test_config_and_settings():
    config = byot_wrn.get_config()
    assert (config.method, config.model) == ("byot", "wideresnet16_2") and not config.teacher.checkpoint
    assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == (0.9, 0.0, 1.0)
    assert dict(config.byot) == BYOT.defaults == {"alpha": 0.1, "temperature": 3.0, "feature_weight": 1e-6}
    assert (config.optimizer.lr, config.batch_size, config.epochs) == (0.05, 64, 240)
    method = get_method("byot", config)
    assert isinstance(method, BYOT) and not method.uses_teacher
    with pytest.warns(UserWarning, match="1 - alpha = 0.9"):  # gamma 1, beta 0: not BYOT's total
        assert get_method("byot", default.get_config()).settings == BYOT.defaults  # no byot section
    with pytest.raises(UserError, match="unknown config.byot keys"):
        get_method("byot", ConfigDict({"byot": {"lambda": 1.0}}))
    with pytest.raises(UserError, match=r"--config.byot.alpha=1.5: must be a number in \[0, 1\]"):
        get_method("byot", ConfigDict({"byot": {"alpha": 1.5}}))


# --- end to end through the engine on digits ---------------------------------------------------------------

def digits_config(epochs=2):
    """The BYOT recipe with a resnet8 on digits: 22 steps per epoch."""
    return on_digits(byot_wrn.get_config(), epochs=epochs, log_every_steps=2)


def records(workdir, kind):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def train_state(workdir, step):
    return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("byot_straight")
    return workdir, train_and_evaluate(digits_config(), workdir)


def test_byot_trains_on_digits(straight_run):
    """Loss and every head's CE fall; the logged loss is 0.9 * CE + term; the heads are trained, their BN
    statistics move, and nothing else is added to the method's variables."""
    workdir, result = straight_run
    assert result["step"] == 44
    train = records(workdir, "train")
    assert len(train) == 22
    first, last = train[:3], train[-3:]
    mean = lambda rows, key: np.mean([r[key] for r in rows])  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.2  # 10.42 -> 9.98 when written
    for head in HEAD_NAMES:
        assert mean(last, f"byot_{head}_ce") < mean(first, f"byot_{head}_ce")
        assert {f"byot_{head}_soft_ce", f"byot_{head}_feature"} <= set(train[0])
    for r in train:
        assert r["loss"] == pytest.approx(0.9 * r["ce"] + r["term"], rel=1e-5) and r["kd"] == 0
    state = train_state(workdir, 44)
    assert sorted(state["params"]["method"]) == ["head1", "head2"]
    assert sorted(state["batch_stats"]["method"]) == ["head1", "head2"]
    for head in HEAD_NAMES:
        assert np.any(np.asarray(state["batch_stats"]["method"][head]["bn3"]["mean"]) != 0)
    assert result["last_top1"] > 15  # chance is 10% (364 test digits); 24.7 when written


def test_byot_evaluates_each_head_and_the_ensemble(straight_run):
    workdir, result = straight_run
    evals = records(workdir, "eval")
    assert [r["epoch"] for r in evals] == [1, 2]
    for r in evals:
        for name in ("head1_top1", "head2_top1", "ensemble_top1"):
            assert 0 <= r[name] <= 100, (name, r)
    assert evals[-1]["top1"] == pytest.approx(result["last_top1"])
    assert evals[-1]["ensemble_top1"] > 15  # 22.8 when written (heads 18.1 and 19.5)


def test_byot_exports_the_backbone_in_the_seed_layout(straight_run):
    """student.pth is the plain resnet8 (no head tensors) and loads strictly into the seed's PyTorch model."""
    workdir, _ = straight_run
    state_dict = torch.load(workdir / "student.pth", weights_only=True)
    torch_model = get_torch_model("resnet8", 10)
    torch_model.load_state_dict(state_dict, strict=True)
    assert int(state_dict["finalact.0.num_batches_tracked"]) == 44


def test_byot_resume_after_an_epoch_is_bitwise_exact(straight_run, tmp_path):
    train_and_evaluate(digits_config(epochs=1), tmp_path)
    result = train_and_evaluate(digits_config(epochs=2), tmp_path)
    assert result["step"] == 44
    resumed, straight = train_state(tmp_path, 44), train_state(straight_run[0], 44)
    for part in ("params", "batch_stats", "opt_state"):  # the heads' params, statistics and momenta included
        assert jax.tree.structure(resumed[part]) == jax.tree.structure(straight[part])
        assert_bitwise_equal(resumed[part], straight[part])
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))
