"""The train step: the update (`gamma * CE + alpha * KD + beta * method term`, then SGD), the jitted programs of
one or `steps_per_dispatch` steps that gather and augment their batches on the device, the metric sums, and the
evaluation's logits.

One jitted step does all per-example work on the device: it gathers the batch from the training set held on
the device, augments it, runs the teacher (eval mode; OFD's in train mode) and the student (train mode),
composes the loss and applies SGD (or DOT, `optimizer.dot`: the task and distillation gradients apart); the train
state is donated. config.dtype is the models' compute dtype; parameters, BN statistics, losses and the optimizer
stay float32."""

import functools

import jax
import jax.numpy as jnp
import optax

from jaxkd.data.saliencymix import mixed_cross_entropy
from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.dispatch import TrainPrograms, steps_per_dispatch
from jaxkd.engine.dot import dot_gradients, uses_dot
from jaxkd.engine.losses import cross_entropy
from jaxkd.engine.mesh import batch_sharded, replicated, train_state_sharding
from jaxkd.engine.setup import Setup
from jaxkd.engine.train_batch import prepare_batch
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, apply_module
from jaxkd.methods.base import float32_outputs
from jaxkd.methods.kd import kd_term


def make_update(setup: Setup):
    """update(state, batch, teacher_variables) -> (state, metrics): one SGD step on a prepared batch.

    The loss is `gamma * CE + alpha * KD + beta * method term`; the teacher runs in eval mode (train mode, its
    running statistics untouched, for a method with `teacher_train_mode`: OFD) and gets no gradient. With DOT
    (`optimizer.dot`) the optimizer takes the gradient of the task loss (gamma * CE) and of the distillation loss
    (alpha * KD + beta * term) apart: one forward pass, its pullback applied twice (`dot_gradients`). For a method
    with `strong_view` (MLKD) the teacher and then the student (train mode, after its pass on the weak view) also run
    on `batch.strong_images`, their outputs handed to the term as `Batch.strong_teacher` / `strong_student`. Pure and
    unjitted: `make_train_step` wraps it, and the parity tests call it on fixed batches."""
    student, method, teacher, config = setup.student, setup.method, setup.teacher, setup.config
    loss_weights = config.loss
    dot = uses_dot(config)

    def update(state: TrainState, batch: Batch, teacher_variables):
        # the teacher's outputs enter the terms in float32 and without gradient
        teacher_out = (jax.lax.stop_gradient(float32_outputs(apply_module(
            teacher.model, teacher_variables, batch.images, train=method.teacher_train_mode,
            method=teacher.model.forward)[0])) if teacher else None)
        if method.strong_view:  # MLKD: the teacher's outputs on the strong view as well
            batch = batch._replace(strong_teacher=jax.lax.stop_gradient(float32_outputs(apply_module(
                teacher.model, teacher_variables, batch.strong_images, train=method.teacher_train_mode,
                method=teacher.model.forward)[0])))

        def weighted_losses(params):
            """((gamma * CE, alpha * KD, beta * term), (batch_stats, method_state, metrics without "loss"))."""
            student_out, student_stats = apply_module(
                student, {"params": params["student"], "batch_stats": state.batch_stats["student"]},
                batch.images, train=True, method=student.forward)
            student_out = float32_outputs(student_out)  # the one cast of the student's outputs for the losses
            term_batch = batch
            if method.strong_view:  # as KD_ours: a second train-mode pass, its BN statistics updated after the first's
                strong_out, student_stats = apply_module(
                    student, {"params": params["student"], "batch_stats": student_stats}, batch.strong_images,
                    train=True, method=student.forward)
                term_batch = batch._replace(strong_student=float32_outputs(strong_out))
            ce = (mixed_cross_entropy(student_out.logits, batch.labels, batch.partners, batch.lam)
                  if setup.pipeline.saliencymix else cross_entropy(student_out.logits, batch.labels))
            kd = kd_term(student_out, teacher_out, loss_weights) if teacher else jnp.zeros((), jnp.float32)
            method_variables = {"params": params["method"], "batch_stats": state.batch_stats["method"]}
            method_out = method.term(method_variables, state.method_state, student_out, teacher_out, term_batch,
                                     train=True).completed(method_variables, state.method_state)
            correct = jnp.sum(jnp.argmax(student_out.logits, -1) == batch.labels)
            batch_stats = {"student": student_stats, "method": method_out.batch_stats}
            metrics = dict(ce=ce, kd=kd, term=method_out.term, correct=correct)
            metrics.update({f"{method.name}_{name}": value for name, value in method_out.metrics.items()})
            weighted = (loss_weights.gamma * ce, loss_weights.alpha * kd, loss_weights.beta * method_out.term)
            return weighted, (batch_stats, method_out.state, metrics)

        if dot:
            grads, loss, (batch_stats, method_state, metrics) = dot_gradients(
                weighted_losses, state.params, (loss_weights.gamma, loss_weights.alpha, loss_weights.beta))
        else:
            def loss_fn(params):
                (task, kd, term), aux = weighted_losses(params)
                return task + kd + term, aux

            (loss, (batch_stats, method_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params)
        metrics = dict(loss=loss, **metrics)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state, method_state=method_state)
        return state, metrics

    return update


def make_train_step(setup: Setup, num_steps: int = 1, unroll: bool | None = None,
                    batch_size: int | None = None):
    """steps(state, sums, teacher_variables, images, labels, index, permutation) -> (state, sums), jitted:
    `num_steps` consecutive train steps in one call (a `lax.scan` when more than one), all in one epoch.

    `batch_size`: the size of the steps' batches, `config.batch_size` (None) or, for the program of each
    epoch's last step when the pipeline keeps the partial batch, `setup.last_batch_size` (one step per call).
    A batch that the devices do not divide (such a remainder) is computed replicated on every device: the same
    result, without data parallelism for that one step.

    `unroll`: whether the scan is unrolled into `num_steps` copies of the step (None: on CPU only). XLA:CPU runs
    convolutions inside a loop body far slower than outside one (resnet8, 8 steps: 25 s in a 4-step loop
    against 1.0-1.2 s one step per call and 0.7-0.8 s unrolled); elsewhere the loop compiles one step's code.

    `images/labels/index` are the whole training set on the device and `permutation` the current epoch's
    order: each step gathers its batch (step `state.step % steps_per_epoch` of the epoch), augments it with the
    step's key (crop, flip, SaliencyMix when on, normalize), and applies `make_update`. `sums` accumulates
    `setup.metric_names` on the device until the host fetches them. State and sums are donated."""
    update, config = make_update(setup), setup.config
    batch_size = config.batch_size if batch_size is None else batch_size
    if unroll is None:
        unroll = setup.platform == "cpu"
    state_sharding = replicated(setup.mesh)
    batch_sharding = batch_sharded(setup.mesh) if batch_size % setup.mesh.devices.size == 0 else state_sharding

    def train_step(state: TrainState, sums, teacher_variables, images, labels, index, permutation):
        # Each device gathers and augments only its rows of the global batch.
        batch = prepare_batch(setup, state.rng, state.step, permutation, images, labels, index, batch_size,
                              batch_sharding)
        state, metrics = update(state, batch, teacher_variables)
        sums = {name: sums[name] + metrics[name].astype(jnp.float32) for name in setup.metric_names}
        return laid_out(setup, state), sums

    def train_steps(state: TrainState, sums, *inputs):
        if num_steps == 1:
            return train_step(state, sums, *inputs)

        def body(carry, _):
            return train_step(*carry, *inputs), None

        (state, sums), _ = jax.lax.scan(body, (state, sums), length=num_steps, unroll=bool(unroll))
        return state, sums

    return jax.jit(train_steps, donate_argnums=(0, 1), out_shardings=(state_out(setup), state_sharding),
                   compiler_options=compiler_options(setup.mesh, models=setup.models))


def make_host_fed_step(setup: Setup):
    """step(state, sums, teacher_variables, images, labels, index) -> (state, sums), jitted: one train step on a
    batch the host's streaming loader made (`jaxkd.data.streaming`: decoded, cropped and flipped on the host;
    uint8, split over the devices). The step normalizes it (`data.normalization`) and applies `make_update`, the
    teacher and student as in the device-resident step; the method's key comes from the step as there. State and
    sums are donated."""
    update, pipeline, steps_per_epoch = make_update(setup), setup.pipeline, setup.steps_per_epoch
    state_sharding, batch_sharding = replicated(setup.mesh), batch_sharded(setup.mesh)

    def train_step(state: TrainState, sums, teacher_variables, images, labels, index):
        _, method_rng, _ = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)  # as prepare_batch's
        batch = Batch(jax.lax.with_sharding_constraint(pipeline.normalize(images), batch_sharding), labels, index,
                      method_rng, epoch=state.step // steps_per_epoch + 1)
        state, metrics = update(state, batch, teacher_variables)
        sums = {name: sums[name] + metrics[name].astype(jnp.float32) for name in setup.metric_names}
        return laid_out(setup, state), sums

    return jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(state_out(setup), state_sharding),
                   compiler_options=compiler_options(setup.mesh, models=setup.models))


def state_out(setup: Setup):
    """The train programs' output state sharding: replicated, or None (set by `laid_out`) for a method that
    lays its state out itself (`Method.shards_state`: CRD's sharded banks)."""
    return None if setup.method.shards_state else replicated(setup.mesh)


def laid_out(setup: Setup, state: TrainState) -> TrainState:
    """`state` pinned to its layout on the mesh (`train_state_sharding`) for a method that lays its state out;
    otherwise unchanged (the program's output sharding replicates it)."""
    if not setup.method.shards_state:
        return state
    return jax.lax.with_sharding_constraint(state, train_state_sharding(setup.mesh, state, setup.method))


def make_eval_logits(setup: Setup):
    """logits_fn(variables, images) -> {"student": ..., the method's extra classifiers, "ensemble"} for
    `evaluate_classifiers`; variables = `eval_variables(state)`. The ensemble (mean of every classifier's
    softmax) is reported only when the method has extra classifiers."""
    student, method = setup.student, setup.method

    def eval_logits(variables, images):
        out = student.apply(variables["student"], images, train=False, method=student.forward)
        extra = method.eval_logits(variables["method"], float32_outputs(out), images)
        logits = {"student": out.logits, **extra}
        if extra:
            probabilities = jnp.mean(jnp.stack([jax.nn.softmax(z) for z in logits.values()]), axis=0)
            logits["ensemble"] = jnp.log(probabilities)
        return logits

    return eval_logits


def eval_variables(state: TrainState) -> dict:
    return {"student": state.student_variables(), "method": state.method_variables()}


def train_programs(setup: Setup) -> TrainPrograms:
    """The loop's train programs (one step per call, and `steps_per_dispatch` per call), built on first use; on
    the streaming path one host-fed step per call."""
    if setup.stream is not None:
        return TrainPrograms(lambda num_steps: make_host_fed_step(setup), 1)
    return TrainPrograms(functools.partial(make_train_step, setup), steps_per_dispatch(setup.config, setup.platform))


def zero_sums(setup: Setup):
    return jax.device_put({name: jnp.zeros((), jnp.float32) for name in setup.metric_names},
                          replicated(setup.mesh))
