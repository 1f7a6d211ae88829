"""Train-step parity: jaxkd's `make_update` against the PyTorch reference (tests/reference/torch_training.py).

From the same initial weights (a randomized PyTorch resnet8 converted with `convert.torch_to_flax`) and the same
un-augmented batches (random normalized float images, random labels), 10 SGD steps (lr 0.05, momentum 0.9,
weight decay 5e-4, lr x0.1 from step index 5: decay after epoch 1 at 5 steps per epoch) of the baseline (CE
only) and of KD (0.1 * CE + 0.9 * KL at T 4 from a randomized resnet20 teacher with random BN statistics), all
float32, must give on both sides:
- the same loss, CE and KD at every step: |jax - torch| <= 1e-4 * |torch|;
- the same learning rate at every step (RepDistiller's schedule), measured on the JAX side from the update
  itself (-<delta p, momentum buffer> / |buffer|^2);
- the same weights and BN running statistics after 10 steps, compared in the PyTorch layout
  (`convert.flax_to_torch` against the torch model's state_dict): per tensor, max|jax - torch| <= 1e-4 *
  max|torch|;
and every weight tensor must have moved from its initial value by more than that tolerance (most by far more),
and the reference run without weight decay must fail the comparison, so the test can fail.

ReLU ties. Each step of resnet8 at batch 32 evaluates ~2.4M ReLUs; a few pre-activations land within fp32
rounding (~1e-7 of their scale) of zero, and the two float32 implementations may round them to opposite signs.
Either branch is a correct float32 result, but the derivative differs by the full upstream gradient at that
element, and through the BN backward one such element changes every earlier weight gradient by ~0.5%
(measured: PyTorch fp32 vs fp64 on one step differed by 0.4-3% per tensor from a single flipped element out of
2.4M; with that element's branch imposed, by <= 4e-6). Over 10 steps at lr 0.05 that left 7 of 12 random seeds
of the baseline above 1e-4 * max|w| (up to 1.1e-3) although nothing differs but rounding. So the comparison is
made tie-exact: the JAX step records each student BatchNorm's train-mode output (every BN here feeds a ReLU)
in the very computation that produces the update (a Flax method interceptor writes it into the returned
batch_stats, removed again before the next step), and the reference adopts JAX's branch exactly where the
signs differ, after checking that each such element is a tie (|z| <= 1e-5 * max|z| of its tensor; any real
difference in the step makes the trajectories part by far more, and fails there). With that, 36 of 36 random
runs (24 baseline, 12 KD) agreed to <= 5e-7 * max|w|, with 0-5 tie breaks per 10-step run, each at
|z| <= 3e-7 * max|z|.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import convert
from configs import default
from jaxkd.data import Split
from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.initial_state import train_state_layout
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import config_learning_rate_schedule, make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, get_method
from jaxkd.models import get_model
from jaxkd.models.batchnorm import BatchNorm
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.torch_references import nchw, randomized_torch_model
from tests.reference import torch_training

STUDENT, TEACHER, NUM_CLASSES = "resnet8", "resnet20", 10
BATCH, STEPS, STEPS_PER_EPOCH = 32, 10, 5
LR, DECAY_EPOCHS = 0.05, (1,)
REL = 1e-4
TIE = 1e-5  # a sign difference of a pre-activation counts as a rounding tie only below this * max|z|
EXPECTED_LR = [LR if step < STEPS_PER_EPOCH else LR * 0.1 for step in range(STEPS)]
PREACT = "preact"  # the batch_stats entry the interceptor adds to each student BatchNorm


def _config(method: str):
    config = default.repdistiller_recipe(default.get_config())  # the reference steps RepDistiller's epoch loop
    config.model = STUDENT
    config.method = method
    config.batch_size = BATCH
    config.optimizer.lr = LR
    config.optimizer.lr_decay_epochs = DECAY_EPOCHS
    if method == "kd":  # RepDistiller's KD recipe (configs/kd_wrn.py)
        config.teacher.arch = TEACHER
        config.loss.gamma, config.loss.alpha, config.loss.beta, config.loss.kd_temperature = 0.1, 0.9, 0.0, 4.0
    return config


def _batches(seed: int):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, BATCH, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (STEPS, BATCH)).astype(np.int32)
    return images, labels


# ---------------------------------------------------------------------------------------------- JAX side


def _record_preactivations(next_fun, args, kwargs, context):
    """Flax method interceptor: a train-mode BatchNorm stores its output (the ReLU's input) in batch_stats."""
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
        if not kwargs.get("use_running_average", args[1] if len(args) > 1 else True):
            context.module.put_variable("batch_stats", PREACT, out)
    return out


def _split_preactivations(tree, prefix=()):
    """(batch_stats without the recorded entries, {torch module name: pre-activation NHWC})."""
    kept, found = {}, {}
    for key, value in tree.items():
        if key == PREACT:
            # Flax path layer{g}_{i}/bn{k} or finalact -> torch module layer{g}.{i}.bn{k} or finalact.0.
            if prefix == ("finalact",):
                found["finalact.0"] = value
            else:
                block, bn = prefix
                group, index = block.split("_")
                found[f"{group}.{index}.{bn}"] = value
        elif isinstance(value, dict):
            kept[key], inner = _split_preactivations(value, prefix + (key,))
            found.update(inner)
        else:
            kept[key] = value
    return kept, found


def _trace(opt_state):
    """The momentum buffer (optax's TraceState.trace) inside the chained optimizer state."""
    states = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.TraceState))
              if isinstance(s, optax.TraceState)]
    assert len(states) == 1
    return states[0].trace


def _effective_lr(old_params, new_params, trace) -> float:
    """lr of a step p <- p - lr * buf, as -<delta, buf> / <buf, buf> (in float64 on the host)."""
    num = den = 0.0
    leaves = (jax.tree_util.tree_leaves(jax.device_get(t)) for t in (old_params, new_params, trace))
    for old, new, buf in zip(*leaves):
        buf = np.asarray(buf, np.float64)
        num += float(np.sum((np.asarray(new, np.float64) - np.asarray(old, np.float64)) * buf))
        den += float(np.sum(buf * buf))
    return -num / den


def _run_jax(config, student_init: dict, teacher_variables, images, labels):
    """10 engine updates from the converted weights; per-step metrics, applied lr and ReLU sign masks."""
    teacher = Teacher(get_model(TEACHER, NUM_CLASSES), teacher_variables, TEACHER) if teacher_variables else None
    # `train_state_layout` (traced, never compiled) gives the engine's
    # state layout; the state itself starts from the converted PyTorch weights.
    probe = Split(jnp.zeros((BATCH, 32, 32, 3), jnp.uint8), labels[0], np.arange(BATCH, dtype=np.int32), NUM_CLASSES)
    setup = Setup(student=get_model(STUDENT, NUM_CLASSES), method=get_method(config.method, config), teacher=teacher,
                  optimizer=make_optimizer(config, STEPS_PER_EPOCH), train=probe, test=None,
                  steps_per_epoch=STEPS_PER_EPOCH, mesh=data_mesh(), config=config)
    layout = train_state_layout(setup)
    assert not jax.tree_util.tree_leaves((layout.params["method"], layout.batch_stats["method"], layout.method_state))
    params = {"student": jax.tree_util.tree_map(jnp.asarray, student_init["params"]), "method": {}}
    batch_stats = {"student": jax.tree_util.tree_map(jnp.asarray, student_init["batch_stats"]), "method": {}}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=setup.optimizer.init(params), method_state=layout.method_state,
                       rng=jax.random.PRNGKey(config.seed))
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(layout)
    assert [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(state)] == \
        [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(layout)]

    engine_update = make_update(setup)

    def update(state, batch, teacher_variables):
        with nn.intercept_methods(_record_preactivations):
            return engine_update(state, batch, teacher_variables)

    # compiled once (all steps have the same shapes), with the engine's compiler options (YNN fusions on CPU)
    update = jax.jit(update, compiler_options=compiler_options(setup.mesh))
    schedule = config_learning_rate_schedule(config, STEPS_PER_EPOCH)
    history, masks = [], []
    for step in range(STEPS):
        batch = Batch(jnp.asarray(images[step]), jnp.asarray(labels[step]), jnp.arange(BATCH, dtype=jnp.int32),
                      jax.random.fold_in(jax.random.PRNGKey(0), step))
        previous = state.params
        state, metrics = update(state, batch, teacher_variables)
        student_stats, preacts = _split_preactivations(state.batch_stats["student"])
        assert len(preacts) == 7  # resnet8: 3 blocks x 2 BN + finalact
        masks.append({name: torch.from_numpy(np.asarray(z).transpose(0, 3, 1, 2) > 0) for name, z in preacts.items()})
        state = state.replace(batch_stats={**state.batch_stats, "student": student_stats})
        record = {name: float(metrics[name]) for name in ("loss", "ce", "kd")}
        record["lr"] = _effective_lr(previous, state.params, _trace(state.opt_state))
        record["scheduled_lr"] = float(schedule(step))
        history.append(record)
    assert update._cache_size() == 1, "the update was recompiled"
    assert int(state.step) == STEPS
    return history, jax.device_get(state.student_variables()), masks


# ------------------------------------------------------------------------------------------ torch side


def _follow_jax_at_ties(student: torch.nn.Module, masks: list) -> list:
    """Forward hooks on the student's BatchNorms (train mode): where the sign of the output differs from the
    JAX step's, flip its value (not its gradient) so that the ReLU takes JAX's branch, after checking that the
    element is a rounding tie. Returns the list of tie breaks (step, module, count, max |z| / max|z|)."""
    ties, calls = [], {}

    def hook_for(name):
        def hook(module, inputs, output):
            if not module.training:
                return None
            step = calls[name] = calls.get(name, -1) + 1
            z = output.detach()
            differ = (z > 0) != masks[step][name]
            if not differ.any():
                return None
            size = float(z.abs()[differ].max() / z.abs().max())
            assert size <= TIE, (f"step {step} {name}: the ReLU inputs of JAX and PyTorch differ in sign at |z| = "
                                 f"{size:.3g} * max|z|: not a rounding tie, the two runs have already parted")
            ties.append((step, name, int(differ.sum()), size))
            return output + torch.where(differ, -2 * z, torch.zeros_like(z))

        return hook

    for name, module in student.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(hook_for(name))
    return ties


def _relative(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("method", ["none", "kd"])
def test_ten_sgd_steps_match_pytorch(method):
    seed = 1234 if method == "none" else 4321
    config = _config(method)
    images, labels = _batches(seed)

    student_torch = randomized_torch_model(STUDENT, NUM_CLASSES, seed=seed)
    initial = {key: value.detach().clone() for key, value in student_torch.state_dict().items()}
    student_init = convert.torch_to_flax(student_torch.state_dict())
    teacher_torch = teacher_variables = None
    if method == "kd":
        teacher_torch = randomized_torch_model(TEACHER, NUM_CLASSES, seed=seed + 1)
        teacher_initial = {key: value.detach().clone() for key, value in teacher_torch.state_dict().items()}
        teacher_variables = convert.torch_to_flax(teacher_torch.state_dict())

    jax_history, jax_variables, masks = _run_jax(config, student_init, teacher_variables, images, labels)

    torch_batches = [(nchw(images[s]), torch.from_numpy(labels[s]).long()) for s in range(STEPS)]
    ties = _follow_jax_at_ties(student_torch, masks)
    torch_history = torch_training.train(
        student_torch, teacher_torch, torch_batches, STEPS_PER_EPOCH, lr=LR, momentum=0.9, weight_decay=5e-4,
        decay_epochs=DECAY_EPOCHS, decay_rate=0.1, gamma=config.loss.gamma, alpha=config.loss.alpha,
        T=config.loss.kd_temperature)

    # Losses at every step, and the learning rate of every step on both sides.
    worst_loss = worst_lr = 0.0
    for step, (ours, ref) in enumerate(zip(jax_history, torch_history)):
        assert ref["lr"] == pytest.approx(EXPECTED_LR[step], rel=1e-12), f"step {step}: torch lr {ref['lr']}"
        assert ours["scheduled_lr"] == pytest.approx(EXPECTED_LR[step], rel=1e-6), f"step {step}"
        worst_lr = max(worst_lr, abs(ours["lr"] - EXPECTED_LR[step]) / EXPECTED_LR[step])
        assert ours["lr"] == pytest.approx(EXPECTED_LR[step], rel=1e-5), \
            f"step {step}: jax applied lr {ours['lr']:.7g}, expected {EXPECTED_LR[step]:g}"
        for name in ("loss", "ce", "kd"):
            if name == "kd" and method == "none":
                assert ours[name] == 0.0 and ref[name] == 0.0
                continue
            diff = abs(ours[name] - ref[name])
            worst_loss = max(worst_loss, diff / abs(ref[name]))
            assert diff <= REL * abs(ref[name]), \
                f"step {step} {name}: jax {ours[name]:.8g} torch {ref[name]:.8g} (rel {diff / abs(ref[name]):.2g})"
    if method == "kd":
        assert all(r["kd"] > 1e-3 for r in torch_history)  # the KD term is not vanishing

    # Final weights and BN running statistics, in the PyTorch layout.
    ours_sd = convert.flax_to_torch(jax_variables, STUDENT)
    ref_sd = student_torch.state_dict()
    assert set(ours_sd) == set(ref_sd)
    parameter_names = {name for name, _ in student_torch.named_parameters()}
    worst = {"weights": 0.0, "bn stats": 0.0}
    least_moved = {"weights": np.inf, "bn stats": np.inf}
    for key, ref in ref_sd.items():
        if key.endswith("num_batches_tracked"):  # a counter the converter fills in; unused with momentum 0.1
            continue
        kind = "weights" if key in parameter_names else "bn stats"
        rel = _relative(ours_sd[key].numpy(), ref.numpy())
        worst[kind] = max(worst[kind], rel)
        assert rel <= REL, f"{method}: {key}: max|jax - torch| = {rel:.3g} * max|torch| > {REL:g}"
        moved = _relative(ref.numpy(), initial[key].numpy())
        least_moved[kind] = min(least_moved[kind], moved)
        assert moved >= 3 * REL, f"{method}: {key} barely moved from its initial value ({moved:.3g})"
    if method == "none":  # negative control: the same run without weight decay is told apart
        no_decay = get_torch_model(STUDENT, NUM_CLASSES)
        no_decay.load_state_dict(initial)
        torch_training.train(no_decay, None, torch_batches, STEPS_PER_EPOCH, lr=LR, momentum=0.9, weight_decay=0.0,
                             decay_epochs=DECAY_EPOCHS, decay_rate=0.1)
        control = max(_relative(ours_sd[key].numpy(), value.numpy()) for key, value in no_decay.state_dict().items()
                      if key in parameter_names)
        assert control > 2 * REL, f"without weight decay the weights differ by only {control:.3g}"
        print(f"\nnone: without weight decay in the reference, max rel weight diff {control:.2g}")
    if teacher_torch is not None:  # the reference's teacher is frozen (eval mode, no_grad, not optimized)
        for key, value in teacher_torch.state_dict().items():
            assert torch.equal(value, teacher_initial[key]), key
    print(f"\n{method}: max rel diff losses {worst_loss:.2g}, weights {worst['weights']:.2g}, "
          f"BN stats {worst['bn stats']:.2g}; applied lr {worst_lr:.2g}; least movement from init: weights "
          f"{least_moved['weights']:.2g}, BN stats {least_moved['bn stats']:.2g}; ReLU tie breaks {len(ties)} "
          f"(largest |z| {max((t[3] for t in ties), default=0):.2g} * max|z|)")


def test_reference_schedule_is_multisteplr_per_epoch():
    """RepDistiller's adjust_learning_rate at the start of each epoch == MultiStepLR stepped after each epoch."""
    for milestones in ((1,), (150, 180, 210)):
        param = torch.nn.Parameter(torch.zeros(1))
        ours = torch.optim.SGD([param], lr=LR)
        theirs = torch.optim.SGD([param], lr=LR)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(theirs, milestones=list(milestones), gamma=0.1)
        for epoch in range(1, 241):
            lr = torch_training.adjust_learning_rate(epoch, LR, milestones, 0.1, ours)
            assert lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12), (milestones, epoch)
            theirs.step()
            scheduler.step()
