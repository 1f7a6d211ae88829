"""OFD against the PyTorch reference of mdistiller's `OFD` (tests/reference/mdistiller_ofd.py): the margins from
BN parameters (`get_margin_from_BN`, both branches), the term, its per-stage losses, the connectors' running
statistics and the gradients w.r.t. the student's pre-ReLU stage outputs and the connectors' parameters, on a
homogeneous pair and a heterogeneous one (4 student stages against 3, aligned on their last entries), from the
same connector weights; the connectors' initialization; the per-family BN lookup on real models (the margins
jaxkd takes from converted teacher variables are those of the BNs mdistiller's `get_bn_before_relu` names); the
refusals; the recipe. Its learning run is tests/test_methods_learn.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from ml_collections import ConfigDict

import convert
from jaxkd.config import recipes
from jaxkd.data import Split
from jaxkd.engine import step
from jaxkd.engine.initial_state import train_state_layout
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.errors import UserError
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.ofd import OFD, margin_from_bn, teacher_margins
from jaxkd.models import ModelOutput, get_model
from jaxkd.tools.published import SOURCES, published_for
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model
from tests.reference.mdistiller_ofd import OFDReference, bn_before_relu, build_feature_connector
from tests.reference.mdistiller_ofd import margin_from_bn as reference_margin

REL = 1e-5
BATCH = 4
# (student stages, teacher stages) as (H, C), scaled down from the pairs' CIFAR shapes
PAIRS = {
    # wrn_40_2 -> wrn_16_2: the same channels and sizes, 1x1 connectors between equal widths
    "wrn_40_2 -> wrn_16_2": (((8, 8), (4, 16), (2, 32)), ((8, 8), (4, 16), (2, 32))),
    # resnet32x4 -> MobileNetV2: 4 student stages against 3, aligned on the last 3 (the student's first left
    # out); other channels on each side; the teacher's maps pooled down (16 -> 8, 8 -> 4) and, for the last, up
    # (2 -> 4)
    "resnet32x4 -> MobileNetV2": (((16, 6), (8, 8), (4, 24), (4, 40)), ((16, 16), (8, 32), (2, 64))),
}


class StubTeacher:
    """A teacher whose BNs before its stage ReLUs are `bn0`, `bn1`, ... at the top of its params."""

    def __init__(self, count: int):
        self.count = count

    def bn_before_relu(self) -> tuple:
        return tuple((f"bn{i}",) for i in range(self.count))


def random_output(rng, stages) -> ModelOutput:
    preacts = [rng.normal(size=(BATCH, h, h, c)).astype(np.float32) for h, c in stages]
    return ModelOutput([np.maximum(p, 0) for p in preacts], None, None, None, preacts)


def test_margin_matches_get_margin_from_bn(rng):
    """Both branches (cdf(-m / s) above and below 0.001), negative weights (|s|), at float32."""
    weight = rng.normal(0.0, 1.0, 200).astype(np.float32)
    bias = rng.normal(0.0, 2.0, 200).astype(np.float32)
    expected = reference_margin(torch.from_numpy(weight), torch.from_numpy(bias)).numpy()
    cdf = scipy.stats.norm.cdf(-bias.astype(np.float64) / np.abs(weight))
    assert np.sum(cdf <= 0.001) >= 5 and np.sum(cdf > 0.001) >= 100 and np.sum(weight < 0) >= 50
    assert_close_scaled(margin_from_bn(jnp.asarray(weight), jnp.asarray(bias)), expected, REL, "margins")


@pytest.mark.parametrize("pair", PAIRS)
def test_term_and_gradients_match_mdistiller(pair, rng):
    """Train mode: the term, each stage's loss, the connectors' running statistics after the step, and the
    gradients w.r.t. every connector parameter and every student pre-ReLU map (zero for a stage left out by the
    alignment), from the reference's connector weights and the margins of the same teacher BNs."""
    s_stages, t_stages = PAIRS[pair]
    student, teacher = random_output(rng, s_stages), random_output(rng, t_stages)
    torch.manual_seed(int(rng.integers(1 << 30)))
    bns = [torch.nn.BatchNorm2d(c) for _, c in t_stages]
    with torch.no_grad():
        for bn in bns:
            bn.weight.normal_(0.8, 0.5)
            bn.bias.normal_(0.0, 1.0)
    reference = OFDReference([c for _, c in s_stages], [c for _, c in t_stages], bns).train()
    teacher_variables = {"params": {f"bn{i}": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()}
                                    for i, bn in enumerate(bns)}}
    method = get_method("ofd", ConfigDict({"ofd": OFD.defaults}))
    assert method.teacher_train_mode
    init = method.init(jax.random.PRNGKey(0), Probe(student, teacher, None, None, 10, StubTeacher(len(bns)),
                                                    teacher_variables))
    variables = reference.jax_variables()
    assert jax.tree.map(np.shape, init.variables) == jax.tree.map(np.shape, variables)
    count = min(len(s_stages), len(t_stages))
    assert len(init.state["margins"]) == count

    def term(params, maps):
        out = method.term({"params": params, "batch_stats": variables["batch_stats"]}, init.state,
                          student._replace(preact_features=maps), teacher, None, True)
        return out.term, out

    (value, out), (param_grads, map_grads) = jit_once(jax.value_and_grad(term, argnums=(0, 1), has_aux=True))(
        variables["params"], [jnp.asarray(p) for p in student.preact_features])

    maps = [nchw(p).requires_grad_() for p in student.preact_features]
    total, stages = reference.ofd_loss(maps, [nchw(p) for p in teacher.preact_features])
    total.backward()
    assert_close_scaled(value, total.detach().numpy(), REL, f"{pair} term")
    for i, loss in enumerate(stages):  # logged weighted, so that they add up to the term
        assert_close_scaled(out.metrics[f"stage{i + 1}"], loss.detach().numpy() / 2 ** (count - i - 1), REL,
                            f"{pair} stage {i + 1}")
    for i, (conv, bn) in enumerate(reference.connectors):
        assert_close_scaled(np.asarray(param_grads[f"connector{i}_conv"]["kernel"]).transpose(3, 2, 0, 1),
                            conv.weight.grad.numpy(), REL, f"{pair} connector {i} conv grad")
        assert_close_scaled(param_grads[f"connector{i}_bn"]["scale"], bn.weight.grad.numpy(), REL, f"{pair} bn{i}")
        assert_close_scaled(param_grads[f"connector{i}_bn"]["bias"], bn.bias.grad.numpy(), REL, f"{pair} bn{i}")
        stats = out.batch_stats[f"connector{i}_bn"]
        assert_close_scaled(stats["mean"], bn.running_mean.numpy(), REL, f"{pair} connector {i} running mean")
        assert_close_scaled(stats["var"], bn.running_var.numpy(), REL, f"{pair} connector {i} running var")
    for i, (ours, theirs) in enumerate(zip(map_grads, maps)):
        if theirs.grad is None:  # left out by the alignment
            assert i < len(maps) - count and not np.any(np.asarray(ours)), f"{pair} stage {i + 1} read"
        else:
            assert_close_scaled(ours, nhwc(theirs.grad), REL, f"{pair} d/d student stage {i + 1}")
    # every branch of the partial L2 is taken on these maps (a broken branch would change the values above)
    with torch.no_grad():
        s = reference.connectors[-1](maps[-1])
        t = torch.nn.functional.adaptive_avg_pool2d(nchw(teacher.preact_features[-1]), s.shape[-2:])
        m = reference.margins[-1]
    assert ((s > m) & (t <= m)).any() and ((s > t) & (t > m) & (t <= 0)).any() and (t > 0).any()


def test_connector_initialization_is_mdistillers():
    """A 3x3 connector 24 -> 40 channels: the conv N(0, sqrt(2 / (3 * 3 * 40))) as `_build_feature_connector`
    (Kolmogorov-Smirnov against that normal, as the reference's own tensor), the BN 1 / 0, running 0 / 1."""
    method = get_method("ofd", ConfigDict({"ofd": {"connector_kernel_size": 3}}))
    student = ModelOutput([], None, None, None, [jnp.zeros((2, 4, 4, 24))])
    teacher = ModelOutput([], None, None, None, [jnp.zeros((2, 4, 4, 40))])
    variables = method.init(jax.random.PRNGKey(3), Probe(student, teacher, None, None, 10, StubTeacher(1),
                                                         {"params": {"bn0": {"scale": jnp.ones(40),
                                                                             "bias": jnp.zeros(40)}}})).variables
    kernel = np.asarray(variables["params"]["connector0_conv"]["kernel"])
    assert kernel.shape == (3, 3, 24, 40)
    torch.manual_seed(0)
    theirs = build_feature_connector(40, 24, 3)[0].weight.detach().numpy()
    std = np.sqrt(2.0 / (3 * 3 * 40))
    for sample in (kernel.ravel(), theirs.ravel()):
        assert scipy.stats.kstest(sample / std, "norm").pvalue > 1e-3
    assert np.all(np.asarray(variables["params"]["connector0_bn"]["scale"]) == 1)
    assert not np.any(np.asarray(variables["params"]["connector0_bn"]["bias"]))
    stats = variables["batch_stats"]["connector0_bn"]
    assert not np.any(np.asarray(stats["mean"])) and np.all(np.asarray(stats["var"]) == 1)


# jaxkd architecture -> mdistiller's family of `get_bn_before_relu`
LOOKUP_MODELS = {"wideresnet16_2": "wrn", "rd_resnet8": "resnet", "rd_resnet8x4": "resnet", "vgg8": "vgg",
                 "MobileNetV2": "mobilenetv2", "ResNet50": "resnetv2"}


@pytest.mark.parametrize("arch", LOOKUP_MODELS)
def test_bn_lookup_finds_mdistillers_layers(arch):
    """A randomized PyTorch model (every BN its own weight and bias) converted to jaxkd: the margins from the
    BNs each family's `bn_before_relu` names in the converted variables equal those of the BNs mdistiller's
    `get_bn_before_relu` returns on the PyTorch model, one per pre-ReLU stage output with its channels."""
    torch_model = randomized_torch_model(arch, 10, seed=1)
    variables = convert.import_torch(torch_model.state_dict(), arch).variables
    model = get_model(arch, 10)
    ours = teacher_margins(model, variables)
    theirs = [reference_margin(bn.weight.data, bn.bias.data).numpy()
              for bn in bn_before_relu(torch_model, LOOKUP_MODELS[arch])]
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close_scaled(a, b, REL, f"{arch} margin {i}")
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3)), method=model.forward), variables)
    assert [m.shape[0] for m in ours] == [p.shape[-1] for p in out.preact_features]


def test_refusals_are_one_line():
    """A teacher family without a lookup (ImageNet's MobileNetV1), mdistiller's refusing ShuffleNets, no teacher
    variables, an even connector kernel: one UserError line each, as the method is made or initialized."""
    student = ModelOutput([], None, None, None, [jnp.zeros((2, 4, 4, 8))])
    for arch, match in (("MobileNetV1", "no BN-before-ReLU lookup"), ("ShuffleV1", "ShuffleV1 cannot be OFD's teacher"),
                        ("ShuffleV2", "ShuffleV2 cannot be OFD's teacher")):
        probe = Probe(student, student, None, None, 10, get_model(arch, 10), {"params": {}})
        with pytest.raises(UserError, match=match) as error:
            get_method("ofd", None).init(jax.random.PRNGKey(0), probe)
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="teacher's model and variables"):
        get_method("ofd", None).init(jax.random.PRNGKey(0), Probe(student, student, None, None, 10))
    with pytest.raises(UserError, match="connector_kernel_size=2: must be odd"):
        get_method("ofd", ConfigDict({"ofd": {"connector_kernel_size": 2}}))


def test_recipe_is_mdistillers():
    """configs/cifar100/ofd.yaml over engine/cfg.py CFG.OFD (:102 CE_WEIGHT 1, :103 FEAT_WEIGHT 0.001, :105
    CONNECTOR.KERNEL_SIZE 1); the teacher in train mode as `OFD.train` leaves it."""
    config = recipes.mdistiller("resnet32x4", "resnet8x4", "ofd")
    assert (config.method, config.loss.gamma, config.loss.alpha, config.loss.beta) == ("ofd", 1.0, 0.0, 0.001)
    assert dict(config.ofd) == {"connector_kernel_size": 1, "teacher_train_mode": True}


def test_published_numbers_are_the_official_readmes():
    """clovaai/overhaul-distillation README.md, 'Experimental results': "| (a) | WRN 28-4 | WRN 16-4 | 22.72% |
    20.89% | 1.83% |" and "| (c) | WRN 28-4 | WRN 16-2 | 27.32% | 24.08% | 3.24% |" (error rates, the proposed
    method's the 5th column), under its own recipe (200 epochs, batch 128), scored at the last epoch."""
    assert [p.top1 for p in published_for("wideresnet28_4", "wideresnet16_4", "ofd", False)] == [79.11]
    assert [p.top1 for p in published_for("wideresnet28_4", "wideresnet16_2", "ofd", False)] == [75.92]
    source = SOURCES["overhaul-distillation README"]
    assert (source.epochs, source.batch_size, source.scoring) == (200, 128, "last")


def test_the_engine_runs_ofds_teacher_in_train_mode(monkeypatch):
    """The engine's train step, traced for OFD on rd_resnet8 -> rd_resnet8 (nothing compiled): the initial state
    takes the margins from the teacher the engine holds (its Probe carries the teacher's model and variables: OFD's
    init refuses a Probe without them), and the update runs that teacher in train mode (BN on batch statistics),
    as mdistiller's `OFD.train` leaves it; `ofd.teacher_train_mode=False` is eval mode."""
    teacher_modes = []
    real_apply_module = step.apply_module

    def spying_apply_module(module, variables, *args, train, **kwargs):
        if module is teacher.model:
            teacher_modes.append(train)
        return real_apply_module(module, variables, *args, train=train, **kwargs)

    monkeypatch.setattr(step, "apply_module", spying_apply_module)
    config = recipes.mdistiller("resnet8", "resnet8", "ofd")
    config.batch_size = 4
    model = get_model("rd_resnet8", 10)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
    teacher = Teacher(model, variables, "rd_resnet8")
    train = Split(jnp.zeros((4, 32, 32, 3), jnp.uint8), np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32),
                  10)
    setup = Setup(student=get_model("rd_resnet8", 10), method=get_method("ofd", config), teacher=teacher,
                  optimizer=make_optimizer(config, 1), train=train, test=None, steps_per_epoch=1, mesh=data_mesh(),
                  config=config)
    state = train_state_layout(setup)
    assert [m.shape for m in state.method_state["margins"]] == [(16,), (32,), (64,)]
    batch = Batch(jnp.zeros((4, 32, 32, 3)), jnp.arange(4), jnp.arange(4), jax.random.PRNGKey(0))
    jax.eval_shape(make_update(setup), state, batch, variables)
    assert teacher_modes == [True]
    config.ofd.teacher_train_mode = False
    assert not get_method("ofd", config).teacher_train_mode
