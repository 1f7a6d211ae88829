"""Train-step parity of DKD (with logit standardization, and the engine's KD term standardized too) and ReviewKD:
jaxkd's `make_update` against a PyTorch loop written from mdistiller's trainer (tests/reference/mdistiller_training.py)
with the reference losses (tests/reference/mdistiller_losses.py).

From the same weights (a randomized PyTorch rd_resnet8 student converted with `convert.torch_to_flax`, a randomized
rd_resnet8 teacher, ReviewKD's ABFs as the reference initializes them) and the same un-augmented batches (random
normalized 32x32 images, batch 8, random labels), 3 SGD steps of one step per epoch (epochs 1, 2, 3: a 2-epoch
warm-up gives factors 0.5, 1, 1; lr 0.05, x0.1 from epoch 3), float32, must give on both sides the same losses at
every step (|jax - torch| <= 1e-4 * |torch|, tests/test_train_parity.py's margin) and the same student weights, BN
running statistics and ABF weights after the 3 steps (per tensor, max|jax - torch| <= 1e-4 * max|torch|), every
weight tensor having moved by more than that. At this size no ReLU input fell within rounding of zero (the
tie-exact machinery of tests/test_train_parity.py is not needed; a tie would fail here, loudly).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convert
from configs import mdistiller
from jaxkd.data import Split
from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.initial_state import train_state_layout
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, get_method
from jaxkd.models import get_model
from tests.helpers.torch_references import nchw, randomized_torch_model
from tests.reference import mdistiller_training
from tests.reference.mdistiller_losses import ReviewKDStudentSide, dkd_loss, dkd_warmup, kd_loss

ARCH, NUM_CLASSES = "rd_resnet8", 10
BATCH, STEPS, STEPS_PER_EPOCH, WARMUP = 8, 3, 1, 2
LR, DECAY_EPOCHS = 0.05, (2,)
REL = 1e-4


def _config(method: str):
    """configs/mdistiller.py's recipe for the pair, shortened: the warm-up and the lr decay within 3 epochs."""
    config = mdistiller.get_config(f"resnet8,resnet8,{method}")
    config.batch_size, config.optimizer.lr, config.optimizer.lr_decay_epochs = BATCH, LR, DECAY_EPOCHS
    config[config.method].warmup = WARMUP
    if method == "dkd_ls":  # and the engine's KD term, standardized too (KD + LS's T 2)
        config.loss.alpha, config.loss.kd_temperature, config.loss.logit_standardization = 0.5, 2.0, True
    return config


def _reference_losses(config, abfs):
    """The distiller's loss dict from the reference's outputs (mdistiller's forward_train)."""
    loss = config.loss

    def losses(student, teacher, labels, epoch):
        terms = {"ce": loss.gamma * F.cross_entropy(student.logits, labels)}
        if config.method == "dkd":
            s = config.dkd
            terms["kd"] = loss.alpha * kd_loss(student.logits, teacher.logits, loss.kd_temperature, True)
            terms["term"] = dkd_warmup(epoch, s.warmup) * dkd_loss(
                student.logits, teacher.logits, labels, s.alpha, s.beta, s.temperature, loss.logit_standardization)[0]
        else:
            hcl = abfs(student.features, student.pooled, teacher.preact_features, teacher.pooled)[1]
            terms["term"] = loss.beta * dkd_warmup(epoch, config.reviewkd.warmup) * hcl
        return terms

    return losses


def _run_jax(config, student_init, teacher_variables, method_variables, images, labels):
    teacher = Teacher(get_model(ARCH, NUM_CLASSES), teacher_variables, ARCH)
    probe = Split(jnp.zeros((BATCH, 32, 32, 3), jnp.uint8), labels[0], np.arange(BATCH, dtype=np.int32), NUM_CLASSES)
    setup = Setup(student=get_model(ARCH, NUM_CLASSES), method=get_method(config.method, config), teacher=teacher,
                  optimizer=make_optimizer(config, STEPS_PER_EPOCH), train=probe, test=None,
                  steps_per_epoch=STEPS_PER_EPOCH, mesh=data_mesh(), config=config)
    layout = train_state_layout(setup)  # the engine's state layout
    params = {"student": student_init["params"], "method": method_variables.get("params", {})}
    batch_stats = {"student": student_init["batch_stats"], "method": method_variables.get("batch_stats", {})}
    params, batch_stats = jax.tree_util.tree_map(jnp.asarray, (params, batch_stats))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=setup.optimizer.init(params), method_state=layout.method_state,
                       rng=jax.random.PRNGKey(config.seed))
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(layout)
    assert [a.shape for a in jax.tree_util.tree_leaves(state)] == [a.shape for a in jax.tree_util.tree_leaves(layout)]
    update = jax.jit(make_update(setup), compiler_options=compiler_options(setup.mesh))
    history = []
    for step in range(STEPS):
        batch = Batch(jnp.asarray(images[step]), jnp.asarray(labels[step]), jnp.arange(BATCH, dtype=jnp.int32),
                      jax.random.PRNGKey(step), epoch=jnp.asarray(step // STEPS_PER_EPOCH + 1, jnp.int32))
        state, metrics = update(state, batch, teacher_variables)
        history.append({name: float(metrics[name]) for name in ("loss", "ce", "kd", "term")})
    assert update._cache_size() == 1, "the update was recompiled (the epoch must be traced)"
    return history, jax.device_get(state)


def _relative(actual, reference) -> float:
    """max|actual - reference| / max|reference|, in float64 (same shapes)."""
    return float(np.max(np.abs(np.subtract(actual, reference, dtype=np.float64))) / np.max(np.abs(reference)))


@pytest.mark.parametrize("method", ["dkd_ls", "reviewkd"])
def test_three_sgd_steps_match_mdistillers_loop(method):
    seed = {"dkd_ls": 11, "reviewkd": 12}[method]
    config = _config(method)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, BATCH, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (STEPS, BATCH)).astype(np.int32)

    student, teacher = (randomized_torch_model(ARCH, NUM_CLASSES, seed=s) for s in (seed, seed + 100))
    initial = {key: value.detach().clone() for key, value in student.state_dict().items()}
    abfs = None
    if config.method == "reviewkd":
        torch.manual_seed(seed)
        out = student.forward_all(torch.zeros(1, 3, 32, 32))
        t_out = teacher.forward_all(torch.zeros(1, 3, 32, 32))
        abfs = ReviewKDStudentSide([f.shape[1] for f in out.features] + [out.pooled.shape[1]],
                                   [f.shape[1] for f in t_out.preact_features] + [t_out.pooled.shape[1]],
                                   [1] + [f.shape[2] for f in out.features][::-1],
                                   [1] + [f.shape[2] for f in t_out.preact_features][::-1])
    method_variables = abfs.jax_variables() if abfs is not None else {}
    initial_abfs = {k: v.detach().clone() for k, v in abfs.state_dict().items()} if abfs is not None else {}

    jax_history, state = _run_jax(config, convert.torch_to_flax(student.state_dict(), ARCH),
                                  convert.torch_to_flax(teacher.state_dict(), ARCH), method_variables, images, labels)
    torch_history = mdistiller_training.train(
        student, teacher, abfs, _reference_losses(config, abfs),
        [(nchw(images[s]), torch.from_numpy(labels[s]).long()) for s in range(STEPS)], STEPS_PER_EPOCH, LR,
        DECAY_EPOCHS)

    weights = {"loss": 1.0, "ce": config.loss.gamma, "kd": config.loss.alpha, "term": config.loss.beta}
    for step, (ours, ref) in enumerate(zip(jax_history, torch_history)):
        assert ref["lr"] == pytest.approx(LR if step < 2 else LR * 0.1)
        for name in ref:
            if name == "lr":
                continue
            value = weights[name] * ours[name]  # the engine logs its terms before the loss weights
            assert abs(value - ref[name]) <= REL * abs(ref[name]), f"step {step} {name}: {value} {ref[name]}"
        assert ref["term"] > 1e-3 * ref["ce"]  # the method's term is not vanishing

    ours_sd = convert.flax_to_torch({"params": state.params["student"], "batch_stats": state.batch_stats["student"]},
                                    ARCH)
    worst = 0.0
    for key, ref in student.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        rel = _relative(ours_sd[key].numpy(), ref.numpy())
        worst = max(worst, rel)
        assert rel <= REL, f"{method}: {key}: {rel:.3g}"
        if not key.endswith(("running_mean", "running_var")):
            assert _relative(ref.numpy(), initial[key].numpy()) >= 3 * REL, f"{key} barely moved"
    if abfs is not None:
        reference_abfs = abfs.jax_variables()  # the reference's, in the JAX layout
        ours_abfs = {"params": state.params["method"], "batch_stats": state.batch_stats["method"]}
        for (path, ref), (_, ours) in zip(jax.tree_util.tree_leaves_with_path(reference_abfs),
                                          jax.tree_util.tree_leaves_with_path(ours_abfs)):
            if path[-1].key == "mean":  # to the features' scale: abf0's BN after a BN over 1x1 maps has mean ~0
                stats = reference_abfs["batch_stats"][path[1].key][path[2].key]
                rel = float(np.max(np.abs(ours - ref)) / np.sqrt(np.max(stats["var"])))
            else:
                rel = _relative(ours, ref)
            worst = max(worst, rel)
            assert rel <= REL, f"ABF {jax.tree_util.keystr(path)}: {rel:.3g}"
        moved = [_relative(abfs.state_dict()[k].numpy(), v.numpy()) for k, v in initial_abfs.items()
                 if k.endswith("weight")]
        assert min(moved) >= 3 * REL
    print(f"\n{method}: max rel diff of weights and statistics {worst:.2g}")
