"""AB, FT and FSP (the methods with RepDistiller's init stage) against PyTorch references of RepDistiller's losses,
modules and `init` loop (tests/reference/repdistiller_init_methods.py):

- each loss and its gradients w.r.t. the student's maps and the method's modules, on a homogeneous and a
  heterogeneous pair, to REL of scale; FSP refuses a pair of other channels (RepDistiller's N/A) with one line;
- the modules initialize as PyTorch's defaults (Conv2d / ConvTranspose2d U(+-1/sqrt(fan_in)), BN 1/0);
- 3 init steps (RepDistiller's `init`: the student's feature modules in train mode, its other BN on running
  statistics, SGD on the init modules only) and, for FT, 3 train steps (translator with the student) against the
  PyTorch loops, to tests/test_train_parity.py's margin; AB's and FSP's training term is 0 with nothing trained.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn

import convert
from configs import repdistiller
from jaxkd.engine.init_stage import InitState, init_optimizer, make_init_update
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.errors import UserError
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.base import INIT_MODULES
from jaxkd.models import ModelOutput, get_model
from jaxkd.tools import published
from tests.helpers.method_inputs import engine_train_steps
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model
from tests.reference import repdistiller_init_methods as reference
from tests.reference import torch_training

REL = 1e-5
BATCH = 4
# NHWC (stem, stage outputs) of student and teacher
PAIRS = {
    "homogeneous": (((8, 8, 8), [(8, 8, 8), (4, 4, 16), (2, 2, 32)]), ((8, 8, 8), [(8, 8, 8), (4, 4, 16), (2, 2, 32)])),
    "heterogeneous": (((8, 8, 8), [(8, 8, 8), (4, 4, 16), (2, 2, 32)]),
                      ((16, 16, 8), [(16, 16, 8), (4, 4, 24), (4, 4, 48)])),
}


def recipe(method: str):
    return repdistiller.get_config(f"wrn_40_2,wrn_16_2,{method}")


def random_output(rng, stem, stages) -> ModelOutput:
    maps = [jnp.asarray(rng.standard_normal((BATCH, *shape), dtype=np.float32)) for shape in (stem, *stages)]
    preacts = [jnp.asarray(rng.standard_normal((BATCH, *shape), dtype=np.float32)) for shape in stages]
    return ModelOutput(maps[1:], None, None, maps[0], preacts)


def torch_of(x) -> torch.Tensor:
    return nchw(np.asarray(x)).clone().requires_grad_(True)


def relative(actual, reference_value) -> float:
    actual, reference_value = np.asarray(actual, np.float64), np.asarray(reference_value, np.float64)
    assert actual.shape == reference_value.shape, (actual.shape, reference_value.shape)
    return float(np.max(np.abs(actual - reference_value)) / np.max(np.abs(reference_value)))


# --- PyTorch modules <-> Flax variables ------------------------------------------------------------------------

def conv_kernel(conv: nn.Module, value) -> np.ndarray:
    """A Conv2d's (O, I, kH, kW) or a ConvTranspose2d's (I, O, kH, kW) tensor as jaxkd's (kH, kW, I, O) kernel."""
    order = (2, 3, 0, 1) if isinstance(conv, nn.ConvTranspose2d) else (2, 3, 1, 0)
    return value(conv.weight).numpy().transpose(order).copy()


def conv_bn_variables(conv, bn, value=lambda p: p.data) -> tuple[dict, dict]:
    params = {"conv": {"kernel": conv_kernel(conv, value), "bias": value(conv.bias).numpy().copy()}}
    stats = {}
    if bn is not None:
        params["bn"] = {"scale": value(bn.weight).numpy().copy(), "bias": value(bn.bias).numpy().copy()}
        stats["bn"] = {"mean": bn.running_mean.numpy().copy(), "var": bn.running_var.numpy().copy()}
    return params, stats


def connector_variables(connector: reference.Connector, value=lambda p: p.data) -> dict:
    params, stats = {}, {}
    for i, c in enumerate(connector.connectors):
        if isinstance(c, reference.ConvReg):
            params[f"connector{i}"], stats[f"connector{i}"] = conv_bn_variables(c.conv, c.bn, value)
    return {"params": params, "batch_stats": stats}


def paraphraser_params(paraphraser: reference.Paraphraser, value=lambda p: p.data) -> dict:
    params = {}
    for part in ("encoder", "decoder"):
        for i, conv in enumerate(getattr(paraphraser, part)[0::2]):
            params[f"{part}{i}"] = {"kernel": conv_kernel(conv, value), "bias": value(conv.bias).numpy().copy()}
    return params


def translator_variables(translator: reference.Translator, value=lambda p: p.data) -> dict:
    params, stats = {}, {}
    layers = translator.encoder
    for i in range(3):
        p, s = conv_bn_variables(layers[3 * i], layers[3 * i + 1], value)
        params[f"conv{i}"], params[f"bn{i}"], stats[f"bn{i}"] = p["conv"], p["bn"], s["bn"]
    return {"params": params, "batch_stats": stats}


def randomize_batchnorms(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)


def assert_tree_close(ours: dict, theirs: dict, what: str, rel: float = REL, per_tree: bool = False):
    """Every leaf within rel of its reference's max |.|, or with `per_tree` of the whole tree's (gradients: a
    conv bias before a train-mode BN has a gradient of zero up to rounding)."""
    scale = max((float(np.max(np.abs(leaf))) for leaf in jax.tree_util.tree_leaves(theirs)), default=1.0)
    for path, value in jax.tree_util.tree_leaves_with_path(ours):
        expected = theirs
        for key in path:
            expected = expected[key.key]
        error = (float(np.max(np.abs(np.asarray(value, np.float64) - expected))) / scale if per_tree
                 else relative(value, expected))
        assert error <= rel, f"{what} {jax.tree_util.keystr(path)}"


# --- each loss and its gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ab_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    torch.manual_seed(1)
    connector = reference.Connector([(BATCH, s[2], s[0], s[1]) for s in s_stages],
                                    [(BATCH, t[2], t[0], t[1]) for t in t_stages])
    randomize_batchnorms(connector, 2)
    connector.train()
    method = get_method("ab", recipe("ab"))
    modules = connector_variables(connector)
    assert (len(modules["params"]) == 0) == (pair == "homogeneous")  # identity connectors where shapes agree

    def loss_fn(params, preacts):
        return method.init_loss({"params": params, "batch_stats": modules["batch_stats"]},
                                student._replace(preact_features=preacts), teacher, None)

    (loss, stats), (grad_params, grad_maps) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
        modules["params"], student.preact_features)
    maps = [torch_of(x) for x in student.preact_features]
    torch_loss = sum(reference.ab_losses(connector(maps), [nchw(np.asarray(t)) for t in teacher.preact_features]))
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL) and torch_loss.item() > 1e-3
    for ours, theirs in zip(grad_maps, maps):
        assert relative(ours, nhwc(theirs.grad)) <= REL
    assert_tree_close(grad_params, connector_variables(connector, value=lambda p: p.grad)["params"], "grad",
                      per_tree=True)
    assert_tree_close(stats, connector_variables(connector)["batch_stats"], "running statistics")


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ft_term_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    s_channels, t_channels = s_stages[-1][2], t_stages[-1][2]
    torch.manual_seed(3)
    paraphraser, translator = reference.Paraphraser(t_channels), reference.Translator(s_channels, t_channels)
    randomize_batchnorms(translator, 4)
    translator.train()
    method = get_method("ft", recipe("ft"))
    state = {INIT_MODULES: {"params": paraphraser_params(paraphraser), "batch_stats": {}}}
    variables = translator_variables(translator)

    # the term: translator (train mode) on the student's last stage output, the frozen paraphraser's factor
    def term_fn(params, last):
        out = method.term({"params": params, "batch_stats": variables["batch_stats"]}, state,
                          student._replace(features=[*student.features[:-1], last]), teacher, None, True)
        return out.term, out.batch_stats

    (term, stats), (grad_params, grad_last) = jax.jit(jax.value_and_grad(term_fn, argnums=(0, 1), has_aux=True))(
        variables["params"], student.features[-1])
    last = torch_of(student.features[-1])
    f_t = nchw(np.asarray(teacher.features[-1]))
    torch_term = reference.factor_transfer(translator(last), paraphraser(f_t, is_factor=True))
    torch_term.backward()
    assert float(term) == pytest.approx(torch_term.item(), rel=REL) and torch_term.item() > 1e-3
    assert relative(grad_last, nhwc(last.grad)) <= REL
    assert_tree_close(grad_params, translator_variables(translator, value=lambda p: p.grad)["params"], "grad",
                      per_tree=True)
    assert_tree_close(stats, translator_variables(translator)["batch_stats"], "running statistics")

    # the init loss: the paraphraser's reconstruction MSE of the teacher's last stage output
    def init_fn(params):
        return method.init_loss({"params": params, "batch_stats": {}}, None, teacher, None)[0]

    loss, grads = jax.jit(jax.value_and_grad(init_fn))(state[INIT_MODULES]["params"])
    paraphraser.zero_grad()
    torch_loss = nn.MSELoss()(paraphraser(f_t)[1], f_t)
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL)
    assert_tree_close(grads, paraphraser_params(paraphraser, value=lambda p: p.grad), "paraphraser grad",
                      per_tree=True)


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_fsp_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    t_stages = [(h, w, s[2]) for (h, w, _), s in zip(t_stages, s_stages)]  # FSP: the student's channels
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    method = get_method("fsp", recipe("fsp"))

    def loss_fn(stem, features):
        return method.init_loss({}, student._replace(stem=stem, features=features), teacher, None)[0]

    loss, (grad_stem, grad_features) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(student.stem, student.features)
    maps = [torch_of(x) for x in (student.stem, *student.features)]
    torch_loss = sum(reference.fsp_losses(maps, [nchw(np.asarray(x)) for x in (teacher.stem, *teacher.features)]))
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL) and torch_loss.item() > 1e-3
    for ours, theirs in zip((grad_stem, *grad_features), maps):
        assert relative(ours, nhwc(theirs.grad)) <= REL


def test_fsp_refuses_a_pair_of_other_channels_in_one_line(rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS["heterogeneous"]
    probe = Probe(random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages), None, None, 10)
    with pytest.raises(UserError, match=r"fsp needs .* same channels; got \[8, 8, 16, 32\] and \[8, 8, 24, 48\]"):
        get_method("fsp", recipe("fsp")).init(jax.random.PRNGKey(0), probe)


def test_ab_and_fsp_train_nothing_and_their_training_term_is_zero(rng):
    """RepDistiller's train_distill: loss_kd = 0 for abound and fsp, the connectors out of the optimizer."""
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS["heterogeneous"]
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    for method_name in ("ab", "fsp"):
        if method_name == "fsp":
            teacher = random_output(rng, s_stem, s_stages)
        method = get_method(method_name, recipe(method_name))
        probe = Probe(student, teacher, None, None, 10)
        init = jax.jit(lambda key: method.init(key, probe))(jax.random.PRNGKey(0))  # noqa: B023
        assert not jax.tree_util.tree_leaves(init.variables)  # nothing trains with the student
        assert set(init.state) == {INIT_MODULES}
        assert float(method.term(init.variables, init.state, student, teacher, None, True).term) == 0.0
        assert method.init_stage(recipe(method_name)) == (30, True, 0.05)
    assert get_method("ft", recipe("ft")).init_stage(recipe("ft")) == (30, False, 0.01)  # a WRN student
    assert get_method("ft", None).init_stage(repdistiller.get_config("wrn_40_2,ShuffleV1,ft")).learning_rate == 0.01
    assert get_method("ft", None).init_stage(repdistiller.get_config("ResNet50,vgg8,ft")).learning_rate == 0.05


# --- initialization -------------------------------------------------------------------------------------------

def assert_uniform(values, bound: float, what: str):
    """Values of U(-bound, bound): within the bound, reaching near it, mean 0 and std bound / sqrt(3) to 5
    standard errors."""
    values = np.asarray(values, np.float64).ravel()
    sigma, n = bound / math.sqrt(3), values.size
    assert np.abs(values).max() <= bound and np.abs(values).max() > (1 - 20 / n) * bound, what
    assert abs(values.mean()) < 5 * sigma / math.sqrt(n), what
    assert abs(values.std() - sigma) < 5 * 0.45 * sigma / math.sqrt(n), what


def test_ft_modules_initialize_as_pytorch_defaults(rng):
    """Paraphraser (t = 32 channels, rate 0.5): convs U(+-1/sqrt(in * 9)), transposed convs U(+-1/sqrt(out * 9))
    (PyTorch's fan_in of a ConvTranspose2d weight), biases alike; Translator (s = 16): convs alike, BN 1/0."""
    student, teacher = random_output(rng, (8, 8, 8), [(4, 4, 16)]), random_output(rng, (8, 8, 8), [(4, 4, 32)])
    method, probe = get_method("ft", recipe("ft")), Probe(student, teacher, None, None, 10)
    init = jax.jit(lambda key: method.init(key, probe))(jax.random.PRNGKey(0))
    paraphraser = init.state[INIT_MODULES]["params"]
    for name, (c_in, c_out, fan) in {"encoder0": (32, 32, 32), "encoder1": (32, 16, 32), "encoder2": (16, 16, 16),
                                     "decoder0": (16, 16, 16), "decoder1": (16, 32, 32),
                                     "decoder2": (32, 32, 32)}.items():
        assert paraphraser[name]["kernel"].shape == (3, 3, c_in, c_out), name
        assert_uniform(paraphraser[name]["kernel"], 1 / math.sqrt(fan * 9), name)
        assert np.abs(paraphraser[name]["bias"]).max() <= 1 / math.sqrt(fan * 9)
    translator = init.variables
    for i, (c_in, c_out) in enumerate(((16, 16), (16, 16), (16, 16))):
        assert translator["params"][f"conv{i}"]["kernel"].shape == (3, 3, c_in, c_out)
        assert_uniform(translator["params"][f"conv{i}"]["kernel"], 1 / math.sqrt(c_in * 9), f"conv{i}")
        assert np.all(translator["params"][f"bn{i}"]["scale"] == 1) and np.all(translator["params"][f"bn{i}"]["bias"] == 0)


# --- 3 init steps and 3 train steps against the PyTorch loops ---------------------------------------------------

NUM_CLASSES, STEPS, TRAIN_BATCH, SIZE = 10, 3, 8, 16
TRAIN_REL = 1e-4  # tests/test_train_parity.py's margin
STUDENT = "resnet8"  # the seed family: finalact is outside the feature modules (its BN stays on running statistics)
INIT_TEACHERS = {"ab": "wideresnet16_2", "ft": "wideresnet16_2", "fsp": "resnet20"}  # fsp: the same channels


def setup_for(method: str, config, teacher_variables) -> Setup:
    teacher = INIT_TEACHERS[method]
    return Setup(student=get_model(STUDENT, NUM_CLASSES), method=get_method(method, config),
                 teacher=Teacher(get_model(teacher, NUM_CLASSES), teacher_variables, teacher),
                 optimizer=None, train=None, test=None, steps_per_epoch=STEPS, mesh=data_mesh(), config=config)


def torch_init_modules(method: str, student, out_s, out_t):
    """(RepDistiller's init_trainable_list, the loss of init, its modules in jaxkd's layout)."""
    features = nn.ModuleList([student.layer0, student.layer1, student.layer2, student.layer3])  # get_feat_modules
    if method == "ab":
        connector = reference.Connector([f.shape for f in out_s.preact_features],
                                        [f.shape for f in out_t.preact_features])
        randomize_batchnorms(connector, 5)
        loss = lambda s, t: sum(reference.ab_losses(connector(s.preact_features), t.preact_features))  # noqa: E731
        return nn.ModuleList([connector, features]), loss, lambda: connector_variables(connector)  # noqa: E731
    if method == "fsp":
        loss = lambda s, t: sum(reference.fsp_losses([s.stem, *s.features], [t.stem, *t.features]))  # noqa: E731
        return nn.ModuleList([features]), loss, lambda: {"params": {}, "batch_stats": {}}  # noqa: E731
    paraphraser = reference.Paraphraser(out_t.features[-1].shape[1])
    loss = lambda s, t: nn.MSELoss()(paraphraser(t.features[-1])[1], t.features[-1])  # noqa: E731
    return nn.ModuleList([paraphraser]), loss, lambda: {"params": paraphraser_params(paraphraser),  # noqa: E731
                                                        "batch_stats": {}}


def student_variables_as_torch(params, batch_stats) -> dict:
    return convert.flax_to_torch({"params": params, "batch_stats": batch_stats}, STUDENT)


@pytest.mark.parametrize("method, seed", [("ab", 21), ("ft", 22), ("fsp", 23)])
def test_three_init_steps_match_pytorch(method, seed):
    """RepDistiller's init for the method: lr 0.05 (FT: 0.01), momentum 0.9, weight decay 5e-4, random 16x16
    batches; the student's feature modules move (AB, FSP) and its finalact and classifier do not."""
    config = recipe(method)
    config.model, config.teacher.arch, config.batch_size = STUDENT, INIT_TEACHERS[method], TRAIN_BATCH
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, TRAIN_BATCH, SIZE, SIZE, 3), dtype=np.float32)
    student = randomized_torch_model(STUDENT, NUM_CLASSES, seed=seed)
    teacher = randomized_torch_model(INIT_TEACHERS[method], NUM_CLASSES, seed=seed + 100)
    initial = {key: value.clone() for key, value in student.state_dict().items()}
    torch.manual_seed(seed)
    with torch.no_grad():  # shapes only: in eval mode, which leaves the running statistics as they are
        out_s, out_t = student.eval().forward_all(nchw(images[0])), teacher.eval().forward_all(nchw(images[0]))
    init_modules, loss_fn, modules_now = torch_init_modules(method, student, out_s, out_t)
    initial_modules = modules_now()

    teacher_variables = convert.torch_to_flax(teacher.state_dict())
    setup = setup_for(method, config, teacher_variables)
    stage = setup.method.init_stage(config)
    student_init = convert.torch_to_flax(student.state_dict())
    params = {"student": student_init["params"], "modules": initial_modules["params"]}
    init_state = InitState(step=jnp.zeros((), jnp.int32), params=params,
                           batch_stats={"student": student_init["batch_stats"],
                                        "modules": initial_modules["batch_stats"]},
                           opt_state=init_optimizer(stage, config, params).init(params))
    update = jax.jit(make_init_update(setup, stage))
    losses = []
    for step in range(STEPS):
        batch = Batch(jnp.asarray(images[step]), jnp.zeros(TRAIN_BATCH, jnp.int32),
                      jnp.arange(TRAIN_BATCH, dtype=jnp.int32), jax.random.PRNGKey(step))
        init_state, loss = update(init_state, batch, teacher_variables)
        losses.append(float(loss))
    reference_losses = reference.init_stage(student, teacher, init_modules, loss_fn,
                                            [nchw(images[s]) for s in range(STEPS)], lr=stage.learning_rate)
    assert losses == pytest.approx(reference_losses, rel=TRAIN_REL)

    init_state = jax.device_get(init_state)
    ours = student_variables_as_torch(init_state.params["student"], init_state.batch_stats["student"])
    worst = 0.0
    for key, value in student.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        worst = max(worst, relative(ours[key].numpy(), value.numpy()))
        assert relative(ours[key].numpy(), value.numpy()) <= TRAIN_REL, key
        moved = relative(value.numpy(), initial[key].numpy()) > 3 * TRAIN_REL
        frozen = method == "ft" or key.startswith(("finalact", "linear"))
        assert moved != frozen, f"{key}: moved {moved}"
    final_modules = modules_now()
    for path, value in jax.tree_util.tree_leaves_with_path(init_state.params["modules"]):
        theirs, start = final_modules["params"], initial_modules["params"]
        for key in path:
            theirs, start = theirs[key.key], start[key.key]
        worst = max(worst, relative(value, theirs))
        assert relative(value, theirs) <= TRAIN_REL, jax.tree_util.keystr(path)
        if path[-1].key == "kernel":  # (a conv bias before a train-mode BN has a zero gradient; FT's move slowly,
            # at lr 0.01: its first kernel by 2.4e-4 of its scale in 3 steps)
            assert relative(theirs, start) > 2 * TRAIN_REL, f"{jax.tree_util.keystr(path)} did not move"
    assert_tree_close(init_state.batch_stats["modules"], final_modules["batch_stats"], "modules' stats", TRAIN_REL)
    assert (method == "fsp") == (not jax.tree_util.tree_leaves(init_state.params["modules"]))
    print(f"\n{method} init: max rel diff {worst:.2e}")


def test_three_ft_train_steps_match_pytorch():
    """FT's recipe (gamma 1, alpha 0, beta 200, lr 0.05): the student and the translator (train mode) by SGD,
    the paraphraser frozen (RepDistiller: in module_list, eval mode, not in trainable_list)."""
    seed = 24
    config = recipe("ft")
    config.model, config.teacher.arch, config.batch_size = STUDENT, INIT_TEACHERS["ft"], TRAIN_BATCH
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, TRAIN_BATCH, SIZE, SIZE, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (STEPS, TRAIN_BATCH)).astype(np.int32)
    student = randomized_torch_model(STUDENT, NUM_CLASSES, seed=seed)
    teacher = randomized_torch_model(INIT_TEACHERS["ft"], NUM_CLASSES, seed=seed + 100)
    initial = {key: value.clone() for key, value in student.state_dict().items()}
    torch.manual_seed(seed)
    s_channels, t_channels = 64, 128
    paraphraser, translator = reference.Paraphraser(t_channels), reference.Translator(s_channels, t_channels)
    randomize_batchnorms(translator, seed)
    initial_translator = translator_variables(translator)
    state_modules = {INIT_MODULES: {"params": paraphraser_params(paraphraser), "batch_stats": {}}}

    history, state = engine_train_steps(config, STUDENT, INIT_TEACHERS["ft"], NUM_CLASSES,
                                        convert.torch_to_flax(student.state_dict()),
                                        convert.torch_to_flax(teacher.state_dict()), initial_translator, images,
                                        labels, method_state=state_modules)
    paraphraser.eval()
    term = lambda s, t: reference.factor_transfer(translator(s.features[-1]),  # noqa: E731
                                                  paraphraser(t.features[-1], is_factor=True))
    reference_history = torch_training.train(
        student, teacher, [(nchw(images[s]), torch.from_numpy(labels[s]).long()) for s in range(STEPS)], STEPS,
        lr=config.optimizer.lr, gamma=config.loss.gamma, alpha=config.loss.alpha, beta=config.loss.beta,
        term=term, modules=translator)
    for step, (ours, theirs) in enumerate(zip(history, reference_history)):
        assert theirs["term"] > 1e-3, f"step {step}: the term is vanishing"
        for name in ("loss", "ce", "term"):
            assert ours[name] == pytest.approx(theirs[name], rel=TRAIN_REL), f"step {step} {name}"
    ours = student_variables_as_torch(state.params["student"], state.batch_stats["student"])
    for key, value in student.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert relative(ours[key].numpy(), value.numpy()) <= TRAIN_REL, key
    final_translator = translator_variables(translator)
    assert_tree_close(state.params["method"], final_translator["params"], "translator", TRAIN_REL)
    assert_tree_close(state.batch_stats["method"], final_translator["batch_stats"], "translator stats", TRAIN_REL)
    assert relative(final_translator["params"]["conv0"]["kernel"], initial_translator["params"]["conv0"]["kernel"]) \
        > 3 * TRAIN_REL
    assert_tree_close(state.method_state[INIT_MODULES]["params"], paraphraser_params(paraphraser), "paraphraser", 0)
    assert relative(ours["layer1.0.conv1.weight"].numpy(), initial["layer1.0.conv1.weight"].numpy()) > 3 * TRAIN_REL


def test_feature_modules_are_repdistillers_get_feat_modules():
    """The student's modules the init stage trains, per family: all but the classifier, and but the WRN family's
    final BN (`bn1`), MobileNetV2's final 1x1 conv (`conv2`), ShuffleV2's final conv and BN (`conv2`, `bn2`)."""
    from jaxkd.engine.init_stage import feature_module_names

    left_out = {"rd_resnet8": {"fc"}, "wideresnet16_2": {"finalact", "linear"}, "resnet8": {"finalact", "linear"},
                "vgg8": {"classifier"}, "MobileNetV2": {"conv2.0", "conv2.1", "classifier.0"},
                "ShuffleV1": {"linear"}, "ShuffleV2": {"conv2", "bn2", "linear"}, "ResNet50": {"linear"}}
    for arch, expected in left_out.items():
        model = get_model(arch, NUM_CLASSES)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
        assert set(params) - feature_module_names(params) == expected, arch


def test_repdistillers_benchmark_pairs_build_ab_and_ft_and_fsp_only_where_its_table_has_a_number():
    """The 13 pairs of RepDistiller's README: AB and FT build their modules for every one; FSP refuses (one
    error line) exactly its N/A pairs: wrn_40_2 -> wrn_40_1 and every cross-architecture pair. Shapes only
    (jax.eval_shape), nothing computed."""
    import functools

    same, cross = published.REPDISTILLER_PAIRS_SAME, published.REPDISTILLER_PAIRS_DIFFERENT
    fsp_pairs = [pair for pair, top1 in zip(same, published.REPDISTILLER_TABLE_SAME["fsp"], strict=True) if top1]
    assert len(fsp_pairs) == 6 and "fsp" not in published.REPDISTILLER_TABLE_DIFFERENT

    @functools.cache
    def output_shapes(arch):
        model, x = get_model(arch, 100), jnp.zeros((2, 32, 32, 3))
        return jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x), x, method=model.forward))

    for teacher, student in same + cross:
        for method_name in ("ab", "ft", "fsp"):
            config = repdistiller.get_config(f"{teacher},{student},{method_name}")
            method = get_method(method_name, config)
            build = lambda s, t: method.init(jax.random.PRNGKey(0), Probe(s, t, None, None, 100))  # noqa: E731,B023
            shapes = output_shapes(config.model), output_shapes(config.teacher.arch)
            if method_name == "fsp" and (teacher, student) not in fsp_pairs:
                with pytest.raises(UserError, match="fsp needs"):
                    jax.eval_shape(build, *shapes)
            else:
                jax.eval_shape(build, *shapes)
