"""AB, FT and FSP (the methods with RepDistiller's init stage) against PyTorch references of RepDistiller's losses,
modules and `init` loop (tests/reference/repdistiller_init_methods.py): random outputs of a homogeneous and a
heterogeneous pair, the modules' PyTorch <-> Flax variables, 3 init steps against the PyTorch loop, and the
checks each method's test file runs for its method."""

import functools

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
from tests.helpers.assertions import relative
from tests.helpers.torch_references import nchw, randomized_torch_model
from tests.reference import repdistiller_init_methods as reference

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


def randomize_batchnorms_seeded(module: nn.Module, seed: int) -> None:
    """Non-trivial BN parameters and statistics from a generator of its own (`seed`), leaving torch's global one
    as it was."""
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


# --- 3 init steps against the PyTorch loop ---------------------------------------------------------------------

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
        randomize_batchnorms_seeded(connector, 5)
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


def assert_three_init_steps_match_pytorch(method: str, seed: int):
    """3 init steps of the engine against RepDistiller's `init` for the method (tests/reference): lr 0.05 (FT:
    0.01), momentum 0.9, weight decay 5e-4, random 16x16 batches, to tests/test_train_parity.py's margin; the
    student's feature modules move (AB, FSP) and its finalact and classifier do not."""
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


def assert_trains_nothing_and_its_training_term_is_zero(method_name: str, rng):
    """AB or FSP: RepDistiller's train_distill has loss_kd = 0 for abound and fsp, the connectors out of the
    optimizer; the init stage runs 30 epochs at lr 0.05 with the student's feature modules."""
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS["heterogeneous"]
    student = random_output(rng, s_stem, s_stages)
    teacher = random_output(rng, s_stem, s_stages) if method_name == "fsp" else random_output(rng, t_stem, t_stages)
    method = get_method(method_name, recipe(method_name))
    probe = Probe(student, teacher, None, None, 10)
    init = jax.jit(lambda key: method.init(key, probe))(jax.random.PRNGKey(0))
    assert not jax.tree_util.tree_leaves(init.variables)  # nothing trains with the student
    assert set(init.state) == {INIT_MODULES}
    assert float(method.term(init.variables, init.state, student, teacher, None, True).term) == 0.0
    assert method.init_stage(recipe(method_name)) == (30, True, 0.05)


@functools.cache
def output_shapes(arch: str):
    """The ModelOutput shapes of `arch` on a CIFAR batch of 2 (jax.eval_shape: nothing computed)."""
    model, x = get_model(arch, 100), jnp.zeros((2, 32, 32, 3))
    return jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x), x, method=model.forward))


def assert_builds_for_pairs(method_name: str, pairs, refused=()):
    """The method builds its modules for each (teacher, student) of `pairs` of RepDistiller's table, and refuses
    (one error line) those in `refused`. Shapes only, nothing computed."""
    for teacher, student in pairs:
        config = repdistiller.get_config(f"{teacher},{student},{method_name}")
        method = get_method(method_name, config)
        build = lambda s, t: method.init(jax.random.PRNGKey(0), Probe(s, t, None, None, 100))  # noqa: E731,B023
        shapes = output_shapes(config.model), output_shapes(config.teacher.arch)
        if (teacher, student) in refused:
            with pytest.raises(UserError, match=f"{method_name} needs"):
                jax.eval_shape(build, *shapes)
        else:
            jax.eval_shape(build, *shapes)
