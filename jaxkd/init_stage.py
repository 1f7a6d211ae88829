"""RepDistiller's init stage (`helper/pretrain.py` `init`) as an engine capability: a method that declares one
(`Method.init_stage`, an `InitStage`) has it run by `jaxkd.train` before normal training (docs/methods.md,
"The init stage").

What RepDistiller's `init` does, and what this module does the same way:
- `epochs` passes (`init_epochs`, 30) over the same training loader, augmentation and batch size as training
  (jaxkd: the run's pipeline, a partial last batch included, SaliencyMix when on), in their own shuffled order;
- only the method's init modules (`state[INIT_MODULES]`) and, for AB and FSP, the student's feature modules
  (its `get_feat_modules`: every module but the classifier, and for the WRN family its final BN, for
  MobileNetV2 its final 1x1 conv, for ShuffleV2 its final conv and BN) train, on `Method.init_loss` alone, by
  SGD with the run's momentum and weight decay at a constant lr (`InitStage.learning_rate`);
- modes: the teacher in eval mode; the init modules in train mode; the student `model_s.eval()` and then its
  feature modules `.train()`: the BNs of the feature modules use batch statistics and update their running
  statistics, every other BN of the student uses its running statistics.

The stage's state (`InitState`) is checkpointed in `WORKDIR/init_checkpoints` at the end of every init epoch and
on SIGTERM / Ctrl-C, so a stopped run resumes inside the stage exactly; when the stage ends its results go into
the train state (`merged_into`), which `jaxkd.train` checkpoints at step 0 at once, so a run stopped in training
never reruns the stage. Its rows in metrics.jsonl have `kind` "init" and the steps `init_step - total_init_steps`
(<= 0, before training's step 1), with `init_step` and `init_epoch`.
"""

import functools
import math
import sys
import time

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxkd import distributed
from jaxkd.compile_options import compiler_options
from jaxkd.data import epoch_permutation
from jaxkd.dispatch import dispatch_plan
from jaxkd.errors import UserError
from jaxkd.mesh import batch_sharded, replicated
from jaxkd.methods.base import INIT_MODULES, Batch, InitStage, apply_module, float32_outputs
from jaxkd.train_batch import prepare_batch
from jaxkd.models.batchnorm import BatchNorm
from jaxkd.run_checkpoint import RunCheckpoints
from jaxkd.train_state import TrainState

# Top-level student modules outside RepDistiller's `get_feat_modules`, by family: the classifiers (`fc`,
# `linear`, `classifier`, `classifier.0`), the WRN family's final BN (`finalact`, its `bn1`), MobileNetV2's
# final 1x1 conv and BN (`conv2.0`, `conv2.1`), ShuffleV2's (`conv2`, `bn2`).
OUTSIDE_FEATURE_MODULES = frozenset({"fc", "linear", "classifier", "classifier.0", "finalact", "conv2.0",
                                     "conv2.1", "conv2", "bn2"})
INIT_STREAM = 0x1417  # folded into the run's keys: the stage's data order and augmentation, apart from training's


@flax.struct.dataclass
class InitState:
    """The init stage's progress: `step` init steps taken; `params` and `batch_stats` hold the student's
    ("student", all of it, the frozen part unchanged) and the method's init modules' ("modules")."""

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def feature_module_names(student_params: dict) -> set:
    """The student's top-level modules that RepDistiller's `get_feat_modules` returns."""
    return set(student_params) - OUTSIDE_FEATURE_MODULES


def trained_leaves(params: dict, stage: InitStage) -> dict:
    """"train" / "frozen" for every leaf of InitState.params: the init modules, and the student's feature
    modules when the stage trains them."""
    features = feature_module_names(params["student"]) if stage.student_features else set()
    student = {name: jax.tree.map(lambda _: "train" if name in features else "frozen", tree)
               for name, tree in params["student"].items()}
    return {"student": student, "modules": jax.tree.map(lambda _: "train", params["modules"])}


def init_optimizer(stage: InitStage, config, params: dict) -> optax.GradientTransformation:
    """RepDistiller's `init` optimizer, `optim.SGD(init_modules.parameters(), lr, momentum, weight_decay)`, on
    the trained leaves only (the frozen ones get no update, no decay and no momentum buffer)."""
    opt = config.optimizer
    sgd = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                      optax.sgd(stage.learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov))
    return optax.multi_transform({"train": sgd, "frozen": optax.set_to_zero()}, trained_leaves(params, stage))


def frozen_batch_norms(names: frozenset):
    """An interceptor that runs the student's BNs under the top-level modules `names` on their running
    statistics (PyTorch's eval mode inside a model in train mode), whatever mode the model passes them."""
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, BatchNorm) and context.method_name == "__call__" and module.path
                and module.path[0] in names):
            kwargs = dict(kwargs, use_running_average=True)
        return next_fun(*args, **kwargs)

    return intercept


def initial_init_state(setup, config, state: TrainState, stage: InitStage) -> InitState:
    """The stage's state at its start: the train state's student, the method's init modules, SGD at rest."""
    modules = state.method_state[INIT_MODULES]
    params = {"student": state.params["student"], "modules": modules.get("params", {})}
    batch_stats = {"student": state.batch_stats["student"], "modules": modules.get("batch_stats", {})}
    return InitState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=init_optimizer(stage, config, params).init(params))


def merged_into(state: TrainState, init_state: InitState) -> TrainState:
    """The train state with the stage's results: the student's variables and the method's init modules."""
    method_state = dict(state.method_state)
    method_state[INIT_MODULES] = {"params": init_state.params["modules"],
                                  "batch_stats": init_state.batch_stats["modules"]}
    return state.replace(params=dict(state.params, student=init_state.params["student"]),
                         batch_stats=dict(state.batch_stats, student=init_state.batch_stats["student"]),
                         method_state=method_state)


def make_init_update(setup, config, stage: InitStage):
    """update(init_state, batch, teacher_variables) -> (init_state, loss): one step of RepDistiller's `init`
    loop on a prepared batch. Pure and unjitted (the parity tests call it on fixed batches)."""
    student, method, teacher = setup.student, setup.method, setup.teacher
    outside = frozenset(OUTSIDE_FEATURE_MODULES)

    def update(init_state: InitState, batch: Batch, teacher_variables):
        teacher_out = jax.lax.stop_gradient(float32_outputs(apply_module(
            teacher.model, teacher_variables, batch.images, train=False, method=teacher.model.forward)[0]))
        optimizer = init_optimizer(stage, config, init_state.params)

        def loss_fn(params):
            student_out, student_stats = None, init_state.batch_stats["student"]
            if stage.student_features:
                with nn.intercept_methods(frozen_batch_norms(outside)):
                    student_out, student_stats = apply_module(
                        student, {"params": params["student"], "batch_stats": student_stats}, batch.images,
                        train=True, method=student.forward)
                student_out = float32_outputs(student_out)
            modules = {"params": params["modules"], "batch_stats": init_state.batch_stats["modules"]}
            loss, module_stats = method.init_loss(modules, student_out, teacher_out, batch)
            return loss, {"student": student_stats, "modules": module_stats}

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(init_state.params)
        updates, opt_state = optimizer.update(grads, init_state.opt_state, init_state.params)
        return init_state.replace(step=init_state.step + 1, params=optax.apply_updates(init_state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state), loss

    return update


def make_init_step(setup, config, stage: InitStage, batch_size: int):
    """step(init_state, loss_sum, key, teacher_variables, images, labels, index, permutation) -> (init_state,
    loss_sum), jitted, state and sum donated: one init step on batches of `batch_size` (the run's, or the
    epoch's partial last one)."""
    update = make_init_update(setup, config, stage)
    state_sharding = replicated(setup.mesh)
    batch_sharding = batch_sharded(setup.mesh) if batch_size % setup.mesh.devices.size == 0 else state_sharding

    def init_step(init_state, loss_sum, key, teacher_variables, images, labels, index, permutation):
        batch = prepare_batch(setup.pipeline, config, key, init_state.step, permutation, images, labels, index,
                              batch_size, batch_sharding, setup.steps_per_epoch)
        init_state, loss = update(init_state, batch, teacher_variables)
        return init_state, loss_sum + loss.astype(jnp.float32)

    return jax.jit(init_step, donate_argnums=(0, 1), out_shardings=(state_sharding, state_sharding),
                   compiler_options=compiler_options(setup.mesh))


def total_steps(setup, stage: InitStage) -> int:
    return stage.epochs * setup.steps_per_epoch


def log_resume_step(setup, config, workdir, train_checkpoint_step: int | None) -> int | None:
    """The step metrics.jsonl resumes from: the train checkpoint's, else (inside the init stage) the init
    checkpoint's, `init_step - total`, else None (a new start)."""
    stage = setup.method.init_stage(config)
    if train_checkpoint_step is not None or stage is None:
        return train_checkpoint_step
    checkpoints = RunCheckpoints(workdir, config.keep_checkpoints, "init_checkpoints")
    try:
        init_step = checkpoints.latest_step()
    finally:
        checkpoints.close()
    return None if init_step is None else init_step - total_steps(setup, stage)


def run_init_stage(setup, config, state: TrainState, teacher_variables, data, workdir, log, stop, say
                   ) -> TrainState:
    """Runs (or resumes) the method's init stage; returns the train state with its results (`merged_into`).
    `data`: (images, labels, index) of the training set on the devices. A stop request saves the stage's
    state and exits as the training loop does."""
    stage = setup.method.init_stage(config)
    if setup.teacher is None:
        raise UserError(f"method {setup.method.name!r}: its init stage needs a teacher")
    total = total_steps(setup, stage)
    init_state = jax.device_put(initial_init_state(setup, config, state, stage), replicated(setup.mesh))
    checkpoints = RunCheckpoints(workdir, config.keep_checkpoints, "init_checkpoints")
    try:
        if checkpoints.latest_step() is not None:
            init_state, _ = checkpoints.restore(init_state)
            say(f"resumed the init stage from {checkpoints.directory} at init step {int(init_state.step)}")
        init_state = _init_loop(setup, config, stage, init_state, state, teacher_variables, data, checkpoints,
                                log, stop, say, total)
    finally:
        checkpoints.close()
    return merged_into(state, init_state)


def _init_loop(setup, config, stage, init_state, state, teacher_variables, data, checkpoints, log, stop, say,
               total):
    spe, on_all_devices = setup.steps_per_epoch, replicated(setup.mesh)
    key = jax.random.fold_in(state.rng, INIT_STREAM)
    full_step = make_init_step(setup, config, stage, config.batch_size)
    last_step = make_init_step(setup, config, stage, setup.last_batch_size) if setup.partial_last_batch else None
    permutation_of = jax.jit(functools.partial(epoch_permutation, num_examples=len(setup.train)),
                             out_shardings=on_all_devices)

    def zero():
        return jax.device_put(jnp.zeros((), jnp.float32), on_all_devices)

    loss_sum, step = zero(), int(init_state.step)
    fetched_step, fetched_time, examples = step, time.perf_counter(), 0
    if step == 0:
        say(f"init stage of {setup.method.name}: {stage.epochs} epochs at lr {stage.learning_rate}")

    def fetch_and_log(loss_sum, step):
        nonlocal fetched_step, fetched_time, examples
        now, count = time.perf_counter(), step - fetched_step
        loss = float(jax.device_get(loss_sum)) / count
        if not math.isfinite(loss):
            raise UserError(f"the init stage's loss became {loss} before init step {step}; stopping")
        checkpoints.check()  # a background save that failed (a full disk) stops the stage here
        log.write(step - total, "init", {"init_step": step, "init_epoch": step / spe, "loss": loss,
                                         "lr": stage.learning_rate,
                                         "images_per_s": examples / max(now - fetched_time, 1e-9)})
        fetched_step, fetched_time, examples = step, now, 0
        return zero(), loss

    # progress within an epoch, as training shows it: a bar on a terminal, a line per log step to a file or pipe
    show_progress = config.progress_bar and distributed.is_primary()
    progress_lines = show_progress and not sys.stdout.isatty()
    while step < total:
        epoch = step // spe
        permutation = permutation_of(jax.random.fold_in(key, 1), epoch)
        loss, bar = None, None
        if show_progress:
            from tqdm import tqdm
            bar = tqdm(total=spe, initial=step % spe, desc=f"init epoch {epoch + 1}/{stage.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stdout, disable=None)  # off when not a TTY
        for _, fetch in dispatch_plan(step, (epoch + 1) * spe, spe, config.log_every_steps, 1,
                                      last_step_alone=setup.partial_last_batch):
            if stop.before_dispatch():
                break
            partial = setup.partial_last_batch and step % spe == spe - 1
            program = last_step if partial else full_step
            init_state, loss_sum = program(init_state, loss_sum, key, teacher_variables, *data, permutation)
            step += 1
            examples += setup.last_batch_size if partial else config.batch_size
            if bar is not None:
                bar.update(1)
            if fetch:
                loss_sum, loss = fetch_and_log(loss_sum, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")
                if progress_lines:
                    print(f"init epoch {epoch + 1}/{stage.epochs} step {step - epoch * spe}/{spe}: loss {loss:.4f}",
                          flush=True)
        if bar is not None:
            bar.close()
        if stop.requested:
            if step > fetched_step:
                fetch_and_log(loss_sum, step)
            stop.save_and_exit(checkpoints, init_state, {}, f"the init stage at init step {step}", say)
        say(f"init epoch {step // spe}/{stage.epochs}: loss {loss:.4f}")
        if step < total:  # the last epoch's state goes into the train state's checkpoint at step 0
            checkpoints.save(init_state, {})
    return init_state
