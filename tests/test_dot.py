"""DOT (`optimizer.dot`): the optimizer against a PyTorch transcription of mdistiller's `DistillationOrientedTrainer`
(tests/reference/mdistiller_dot.py) on every side a tensor can be on, three train steps of KD + DOT against
mdistiller's `DOT` trainer loop (parameters and both momentum buffers, at
tests/test_train_parity_mdistiller.py's margins), which losses reach which tensors in a real step (against
PyTorch's `grad is None`), a checkpoint round trip of the DOT state, and the config's refusals. KD + DOT's
learning run is tests/test_methods_learn.py's `kd+dot` line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convert
from configs import default, mdistiller
from jaxkd.config.checks import check_run_config
from jaxkd.data import Split
from jaxkd.engine import dot as dot_module
from jaxkd.engine.dot import BOTH, DISTILL, NEITHER, TASK, DotGradients, DotState
from jaxkd.engine.initial_state import INITIAL_STATE_CPU_OPTIONS, train_state_layout
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.errors import UserError
from jaxkd.methods import Batch, get_method
from jaxkd.models import get_model
from tests.helpers.torch_references import nchw, randomized_torch_model
from tests.reference import mdistiller_dot
from tests.reference.mdistiller_losses import kd_loss

ARCH, NUM_CLASSES = "rd_resnet8", 10
BATCH, STEPS, STEPS_PER_EPOCH = 8, 3, 1
LR, DECAY_EPOCHS = 0.05, (2,)  # mdistiller's lr, x0.1 from epoch 3 (the third step)
REL = 1e-4  # tests/test_train_parity_mdistiller.py's margin


# ------------------------------------------------------------------------------------------- the optimizer alone
def test_the_optimizer_matches_mdistillers_on_every_side():
    """Four tensors, one on each side (both losses reach it, only the task loss, only the distillation loss,
    neither), 5 steps of random gradients across an lr decay: parameters and both momentum buffers equal
    `DistillationOrientedTrainer`'s up to float32 rounding after every step. The sides' rules differ (momenta
    0.825 / 0.975 / 0.9, weight decay on the task side, none on a distillation-only tensor's first step), so a
    rule applied to the wrong side fails."""
    config = default.get_config()
    config.optimizer.lr, config.optimizer.weight_decay, config.optimizer.dot = 0.1, 5e-2, True
    config.optimizer.lr_decay_epochs, config.optimizer.lr_decay_timing = (2,), "repdistiller"
    shapes = {"both": (3, 4), "distill": (5,), "neither": (2,), "task": (2, 3)}  # jax.tree.leaves order
    sides = (BOTH, DISTILL, NEITHER, TASK)
    rng = np.random.default_rng(0)
    params = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    optimizer = make_optimizer(config, steps_per_epoch=2)  # the lr drops to 0.01 from step 4 (epoch 3)
    state = optimizer.init(params)
    assert isinstance(state, DotState)
    tensors = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in params.items()}
    reference = mdistiller_dot.DistillationOrientedTrainer(tensors.values(), 0.1, 0.9 - 0.075, 0.9 + 0.075, 5e-2)
    update = jax.jit(optimizer.update)
    for step in range(5):
        task = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
        distill = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
        updates, state = update(DotGradients(task, distill, sides), state, params)
        params = jax.tree.map(lambda p, u: p + np.asarray(u), params, updates)
        reference.lr = 0.1 if step < 4 else 0.1 * 0.1
        reference.zero_grad()
        for name in ("both", "distill"):
            tensors[name].grad = torch.from_numpy(distill[name].copy())
        reference.step_kd()
        reference.zero_grad()
        for name in ("both", "task"):
            tensors[name].grad = torch.from_numpy(task[name].copy())
        reference.step()
        for name, tensor in tensors.items():
            np.testing.assert_allclose(params[name], tensor.detach().numpy(), rtol=2e-6, atol=1e-7,
                                       err_msg=f"step {step} {name}")
            for ours, buffers in ((state.task_momentum, reference.task_buffers),
                                  (state.distill_momentum, reference.distill_buffers)):
                expected = buffers[tensor].numpy() if tensor in buffers else np.zeros(shapes[name], np.float32)
                np.testing.assert_allclose(ours[name], expected, rtol=2e-6, atol=1e-7, err_msg=f"{step} {name}")
    assert int(state.count) == 5
    assert set(reference.task_buffers) == {tensors["both"], tensors["task"]}  # every side was exercised
    assert set(reference.distill_buffers) == {tensors["both"], tensors["distill"]}


# ------------------------------------------------------------------------------------------- three train steps
def _config(method: str):
    """configs/mdistiller.py's `method` for the small pair, shortened: the lr decay within 3 one-step epochs."""
    config = mdistiller.get_config(f"resnet8,resnet8,{method}")
    config.batch_size, config.optimizer.lr, config.optimizer.lr_decay_epochs = BATCH, LR, DECAY_EPOCHS
    return config


def _setup(config, teacher_variables) -> Setup:
    probe = Split(jnp.zeros((BATCH, 32, 32, 3), jnp.uint8), np.zeros(BATCH, np.int32),
                  np.arange(BATCH, dtype=np.int32), NUM_CLASSES)
    return Setup(student=get_model(ARCH, NUM_CLASSES), method=get_method(config.method, config),
                 teacher=Teacher(get_model(ARCH, NUM_CLASSES), teacher_variables, ARCH),
                 optimizer=make_optimizer(config, STEPS_PER_EPOCH), train=probe, test=None,
                 steps_per_epoch=STEPS_PER_EPOCH, mesh=data_mesh(), config=config)


def _initial_state(setup: Setup, student_variables) -> TrainState:
    params = jax.tree.map(jnp.asarray, {"student": student_variables["params"], "method": {}})
    batch_stats = jax.tree.map(jnp.asarray, {"student": student_variables["batch_stats"], "method": {}})
    layout = train_state_layout(setup)  # the engine's own state has this layout
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=setup.optimizer.init(params), method_state=layout.method_state,
                       rng=jax.random.PRNGKey(0))
    assert jax.tree.structure(state) == jax.tree.structure(layout)
    return state


def _reference_losses(config):
    """mdistiller's `KD.forward_train` loss dict: CE weight * CE and KD weight * KD."""
    loss = config.loss

    def losses(student, teacher, labels, epoch):
        return {"loss_ce": loss.gamma * F.cross_entropy(student.logits, labels),
                "loss_kd": loss.alpha * kd_loss(student.logits, teacher.logits, loss.kd_temperature, False)}

    return losses


def _relative(actual, reference) -> float:
    return float(np.max(np.abs(np.subtract(actual, reference, dtype=np.float64))) / np.max(np.abs(reference)))


def _as_torch(tree, state) -> dict:
    """A tree shaped like the student's params, in PyTorch's state_dict names (the BN statistics alongside)."""
    return convert.flax_to_torch({"params": tree["student"], "batch_stats": state.batch_stats["student"]}, ARCH)


def test_three_steps_match_mdistillers_dot_trainer():
    """From the same weights and batches (random rd_resnet8 student and teacher, batch 8, 10 classes), 3 steps of
    `make_update` with KD + DOT and of mdistiller's DOT loop give the same losses at every step, and the same
    student weights, BN statistics and both momentum buffers after them (max|jax - torch| <= 1e-4 * max|torch|
    per tensor), every weight having moved by more than that and the two buffers being far apart. (DKD + DOT
    differs only in the distillation loss, checked in tests/test_method_dkd.py; the step is compiled without
    XLA's backend optimizations, as `create_train_state` is on CPU: half the compile time, the same computation.)
    The seed puts no ReLU input within rounding of zero (tests/test_train_parity_mdistiller.py's caveat; DKD + DOT
    with seed 22 had one at its third step: buffers 1.6% apart before the classifier, weights within 1e-4)."""
    method, seed = "kd_dot", 21
    config = _config(method)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, BATCH, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (STEPS, BATCH)).astype(np.int32)
    student, teacher = (randomized_torch_model(ARCH, NUM_CLASSES, seed=s) for s in (seed, seed + 100))
    initial = {key: value.detach().clone() for key, value in student.state_dict().items()}

    setup = _setup(config, convert.torch_to_flax(teacher.state_dict(), ARCH))
    state = _initial_state(setup, convert.torch_to_flax(student.state_dict(), ARCH))
    update = jax.jit(make_update(setup), compiler_options=INITIAL_STATE_CPU_OPTIONS)
    ours = []
    for step in range(STEPS):
        batch = Batch(jnp.asarray(images[step]), jnp.asarray(labels[step]), jnp.arange(BATCH, dtype=jnp.int32),
                      jax.random.PRNGKey(step), epoch=jnp.asarray(step // STEPS_PER_EPOCH + 1, jnp.int32))
        state, metrics = update(state, batch, setup.teacher.variables)
        ours.append({name: float(metrics[name]) for name in ("loss", "ce", "kd", "term")})
    assert update._cache_size() == 1
    state = jax.device_get(state)

    history, optimizer = mdistiller_dot.train(
        student, teacher, _reference_losses(config),
        [(nchw(images[s]), torch.from_numpy(labels[s]).long()) for s in range(STEPS)], STEPS_PER_EPOCH, LR,
        DECAY_EPOCHS, config.optimizer.dot_delta)
    loss = config.loss
    for step, (mine, ref) in enumerate(zip(ours, history)):
        assert ref["lr"] == pytest.approx(LR if step < 2 else LR * 0.1)
        distill = loss.alpha * mine["kd"] + loss.beta * mine["term"]
        for value, expected in ((loss.gamma * mine["ce"], ref["loss_ce"]), (distill, ref["loss_kd"]),
                                (mine["loss"], ref["loss_ce"] + ref["loss_kd"])):
            assert abs(value - expected) <= REL * abs(expected), f"step {step}: {value} {expected}"

    worst = 0.0
    by_name = dict(student.named_parameters())
    trees = {"weights": _as_torch(state.params, state),
             "task momentum": _as_torch(state.opt_state.task_momentum, state),
             "distillation momentum": _as_torch(state.opt_state.distill_momentum, state)}
    for key, ref in student.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        rel = _relative(trees["weights"][key].numpy(), ref.numpy())
        worst = max(worst, rel)
        assert rel <= REL, f"{method}: {key}: {rel:.3g}"
        if key not in by_name:  # running statistics
            continue
        assert _relative(ref.numpy(), initial[key].numpy()) >= REL, f"{key} barely moved"
        task_buffer, distill_buffer = optimizer.task_buffers[by_name[key]], optimizer.distill_buffers[by_name[key]]
        for name, expected in (("task momentum", task_buffer), ("distillation momentum", distill_buffer)):
            rel = _relative(trees[name][key].numpy(), expected.numpy())
            worst = max(worst, rel)
            assert rel <= REL, f"{method}: {name} of {key}: {rel:.3g}"
        assert _relative(task_buffer.numpy(), distill_buffer.numpy()) > 0.1, key  # two buffers, not one
    print(f"\n{method}: max rel diff of weights, statistics and momentum buffers {worst:.2g}")


# ---------------------------------------------------------------------------------- which losses reach which
def test_the_sides_are_where_pytorch_leaves_gradients(monkeypatch):
    """FitNets + DOT (its hint from the student's second stage, alpha 0): PyTorch leaves the hint loss no gradient
    on the student's third stage and classifier (task side only) and the CE none on the regressor (distillation
    side only); `gradient_sides` finds the same sides in the traced step, tensor by tensor."""
    config = mdistiller.get_config("resnet8,resnet8,kd_dot")
    config.method, config.loss.gamma, config.loss.alpha, config.loss.beta = "fitnet", 1.0, 0.0, 100.0
    config.batch_size = BATCH
    assert check_run_config(config) == []
    found = []
    real = dot_module.gradient_sides
    monkeypatch.setattr(dot_module, "gradient_sides", lambda *args: found.append(real(*args)) or found[-1])
    teacher = randomized_torch_model(ARCH, NUM_CLASSES, seed=1)
    setup = _setup(config, convert.torch_to_flax(teacher.state_dict(), ARCH))
    layout = train_state_layout(setup)
    batch = Batch(jnp.zeros((BATCH, 32, 32, 3)), jnp.zeros(BATCH, jnp.int32), jnp.arange(BATCH, dtype=jnp.int32),
                  jax.random.PRNGKey(0), epoch=jnp.ones((), jnp.int32))
    jax.eval_shape(make_update(setup), layout, batch, setup.teacher.variables)  # traced, not compiled
    (sides,) = found
    leaves = jax.tree_util.tree_leaves_with_path(layout.params)
    ours = {jax.tree_util.keystr(path): side for (path, _), side in zip(leaves, sides, strict=True)}
    method_sides = {side for key, side in ours.items() if key.startswith("['method']")}
    assert method_sides == {DISTILL}

    # PyTorch: which student tensors a function of the hint feature reaches, and which the logits do
    student = randomized_torch_model(ARCH, NUM_CLASSES, seed=2)
    hint = setup.method.settings["hint_layer"]
    out = student.forward_all(torch.zeros(2, 3, 32, 32))
    out.features[hint].sum().backward(retain_graph=True)
    reached_by_hint = {name for name, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    out.logits.sum().backward()
    reached_by_logits = {name for name, p in student.named_parameters() if p.grad is not None}
    assert reached_by_logits == {name for name, _ in student.named_parameters()}
    assert reached_by_hint and reached_by_hint != reached_by_logits

    expected = {name: BOTH if name in reached_by_hint else TASK for name in reached_by_logits}
    flat = {key: side for key, side in ours.items() if key.startswith("['student']")}
    ours_by_torch_name = {}
    for side in (BOTH, TASK):  # convert.flax_to_torch names the tensors: mark each side's as 1, the others 0
        marks = jax.tree_util.tree_map_with_path(
            lambda path, leaf: np.ones(leaf.shape, np.float32) if flat["['student']" + jax.tree_util.keystr(path)]
            == side else np.zeros(leaf.shape, np.float32), layout.params["student"])
        stats = jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32), layout.batch_stats["student"])
        for name, tensor in convert.flax_to_torch({"params": marks, "batch_stats": stats}, ARCH).items():
            if name in expected and float(tensor.abs().max()) > 0:
                ours_by_torch_name[name] = side
    assert ours_by_torch_name == expected


# ------------------------------------------------------------------------------------------ checkpoint and config
def test_the_dot_state_survives_a_checkpoint(tmp_path):
    """A DOT train state saved and restored by the run's checkpoints (Orbax): both buffers and the count."""
    from jaxkd.io.run_checkpoint import RunCheckpoints

    config = default.get_config()
    config.optimizer.dot = True
    optimizer = make_optimizer(config, steps_per_epoch=10)
    params = {"student": {"w": jnp.arange(6.0).reshape(2, 3)}, "method": {"v": jnp.ones(2)}}
    grads = DotGradients(jax.tree.map(jnp.ones_like, params), jax.tree.map(lambda p: 2 * p, params),
                         (DISTILL, BOTH))
    opt_state = optimizer.update(grads, optimizer.init(params), params)[1]
    state = TrainState(step=jnp.ones((), jnp.int32), params=params, batch_stats={"student": {}, "method": {}},
                       opt_state=opt_state, method_state=None, rng=jax.random.PRNGKey(0))
    template = state.replace(opt_state=optimizer.init(params))
    checkpoints = RunCheckpoints(tmp_path, keep=1)
    checkpoints.save(state, {"epoch": 1})
    checkpoints.wait_until_saved()
    checkpoints.close()
    restored, _ = RunCheckpoints(tmp_path, keep=1).restore(template)
    assert isinstance(restored.opt_state, DotState) and int(restored.opt_state.count) == 1
    for ours, saved in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(opt_state), strict=True):
        np.testing.assert_array_equal(ours, saved)
    assert float(jnp.max(jnp.abs(restored.opt_state.distill_momentum["student"]["w"]))) > 0


@pytest.mark.parametrize("changes, message", [
    ({"optimizer.dot_delta": 0.05}, r"--config.optimizer.dot_delta=0.05: it sets DOT's momenta only with"),
    ({"optimizer.dot": True, "optimizer.dot_delta": 0.1, "optimizer.momentum": 0.95},
     r"DOT's task momentum \(0.85\) and distillation momentum \(1.05\) must both be in \[0, 1\)"),
    ({"optimizer.dot": True, "optimizer.nesterov": True}, "optimizer.nesterov cannot be combined with optimizer.dot"),
    ({"optimizer.dot": True, "optimizer.dot_delta": 1.5}, r"--config.optimizer.dot_delta=1.5: must be a number in"),
    ({"optimizer.dot": True, "method": "none"}, r"--config.optimizer.dot=True: method 'none' with loss.alpha 0.0 "
                                                r"and loss.beta 0.0 has no distillation loss for DOT"),
])
def test_bad_dot_settings_are_one_line(changes, message):
    config = mdistiller.get_config("resnet8,resnet8,kd_dot")
    config.optimizer.dot, config.optimizer.dot_delta = False, 0.075
    for key, value in changes.items():
        section, name = key.split(".") if "." in key else (None, key)
        if section is None:
            config[name] = value
        else:
            config[section][name] = value
    if changes.get("method") == "none":
        config.loss.alpha, config.loss.gamma = 0.0, 1.0
        config.teacher.checkpoint = config.teacher.arch = ""
    with pytest.raises(UserError, match=message) as raised:
        check_run_config(config)
    assert "\n" not in str(raised.value)
