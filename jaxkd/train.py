"""Training: `python -m jaxkd.train --config configs/NAME.py --workdir DIR [--config.key=value ...]`.

One jitted step does all per-example work on the device: it gathers the batch from the training set held on
the device, augments it, runs the teacher (eval mode) and the student (train mode), composes
`gamma * CE + alpha * KD + beta * method term`, and applies SGD; the train state is donated. One host call runs
one step, or `config.steps_per_dispatch` of them (a `lax.scan`). The host only decides when to log, evaluate
and checkpoint. Re-running the same command resumes from the workdir's latest checkpoint, exactly: the data
order, random numbers, optimizer state and BN statistics continue as if never stopped. SIGTERM (preemption)
and Ctrl-C save a checkpoint before exiting. Beside this file: `jaxkd.dispatch` (steps per host call and the
loop's plan), `jaxkd.workdir` (config.json, the resume check, the lock, the final exports),
`jaxkd.stop_request` (SIGTERM, Ctrl-C).

The workdir receives `config.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/` (train state), and at the
end `model/` (the student as a model checkpoint, usable as a teacher or by `jaxkd.evaluate`) and
`student.pth` (seed layout).
"""

import contextlib
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxkd import distributed, host_allocator
from jaxkd.compile_options import compiler_options
from jaxkd.config_checks import check_run_config
from jaxkd.config_command_line import parse_config_command_line
from jaxkd.data import epoch_permutation, load_split
from jaxkd.data.pipeline import DataPipeline
from jaxkd.data.saliencymix import mixed_cross_entropy
from jaxkd.dispatch import TrainPrograms, dispatch_plan, steps_per_dispatch
from jaxkd.errors import UserError, exit_process, run_command
from jaxkd.evaluate import evaluate_classifiers, evaluate_split
from jaxkd.init_stage import log_resume_step, run_init_stage, total_steps as init_stage_steps
from jaxkd.losses import cross_entropy
from jaxkd.mesh import batch_sharded, data_mesh, replicated
from jaxkd.methods import Batch, Method, Probe, apply_module, get_method
from jaxkd.methods.base import float32_outputs
from jaxkd.methods.kd import kd_term
from jaxkd.metric_log import MetricLog
from jaxkd.model_checkpoint import load_model
from jaxkd.models import get_model
from jaxkd.optimizer import config_learning_rate_schedule, make_optimizer
from jaxkd.paths import input_exists
from jaxkd.run_checkpoint import RunCheckpoints
from jaxkd.safe_write import check_output_directory
from jaxkd.stop_request import StopRequest
from jaxkd.train_batch import prepare_batch
from jaxkd.train_state import TrainState
from jaxkd.wandb_log import check_wandb_settings
from jaxkd.workdir import (WorkdirLock, check_config_json, check_epochs, create_workdir, export_models,
                          save_config)

METRIC_NAMES = ("loss", "ce", "kd", "term", "correct")  # summed on the device between two fetches
# config.dtype: the models' compute dtype. Parameters, BN statistics, losses and the optimizer stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Teacher:
    model: object
    variables: dict
    arch: str


@dataclasses.dataclass
class Setup:
    """Everything `train_and_evaluate` builds from the config before the first compile."""

    student: object
    method: Method
    teacher: Teacher | None
    optimizer: optax.GradientTransformation
    train: object  # jaxkd.data.Split
    test: object
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    pipeline: DataPipeline = DataPipeline()  # the seed's: reflect padding, its constants, full batches only
    last_batch_size: int = 0  # of each epoch's last step, when the pipeline keeps a partial batch; 0: none

    @property
    def partial_last_batch(self) -> bool:
        """Whether each epoch ends with a smaller batch (its own compiled step): RepDistiller's drop_last=False."""
        return self.last_batch_size > 0

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What the step sums on the device: the engine's metrics, then the method's own (the keys of its
        term's metrics, found by `Method.initialize` in `create_train_state`)."""
        return METRIC_NAMES + tuple(f"{self.method.name}_{name}" for name in self.method.metric_names)

    @property
    def platform(self) -> str:
        """The devices' platform: "cpu", "gpu" or "tpu"."""
        return self.mesh.devices.flat[0].platform


def check_config(config, mesh) -> None:
    """Config mistakes that can be seen without loading anything, as one clear line each: every value's type
    and range, and settings that cannot take effect (jaxkd.config_checks; the method's own section is checked
    by `get_method`); those a recipe carries unused are listed once."""
    for note in check_run_config(config):
        _say(f"unused: {note}")
    if config.batch_size % mesh.devices.size:
        raise UserError(f"batch_size {config.batch_size} is not divisible by the {mesh.devices.size} devices")
    if config.get("wandb"):
        check_wandb_settings(config.wandb)  # the client, when a mode other than disabled asks for it


def check_teacher_path(config, method: Method) -> None:
    """A teacher the method needs and the config does not name, or names but is not there: one line, before
    the data is loaded."""
    if not method.uses_teacher:
        return
    if not config.teacher.checkpoint:
        raise UserError(f"method {method.name!r} needs a teacher: set --config.teacher.checkpoint to a .pth, "
                        f"a model checkpoint directory or a training workdir")
    if not input_exists(config.teacher.checkpoint, f"--config.teacher.checkpoint {config.teacher.checkpoint}"):
        raise UserError(f"--config.teacher.checkpoint {config.teacher.checkpoint}: no such file or directory")


def load_teacher(config, method: Method) -> Teacher | None:
    """The configured teacher (None for a method without one), its model built for the classes it has
    (`build` checks them against the data's)."""
    if not method.uses_teacher:
        return None
    check_teacher_path(config, method)
    try:
        variables, arch, teacher_classes = load_model(config.teacher.checkpoint, config.teacher.arch or None)
    except UserError as error:
        if not config.teacher.arch:
            raise
        raise UserError(f"{error}; the config names teacher.arch={config.teacher.arch}: pass "
                        f"--config.teacher.arch='' to take the architecture from the file") from None
    return Teacher(get_model(arch, teacher_classes, dtype=COMPUTE_DTYPES[config.dtype]), variables, arch)


def build(config, devices=None, *, data=None, teacher: Teacher | None = None) -> Setup:
    """Loads data, teacher and method for `config` on `devices` (default: all). `data` = (train, test) splits
    and `teacher` replace what the config names (the bench's synthetic data and random teacher)."""
    mesh = data_mesh(None if devices is None else tuple(devices))
    check_config(config, mesh)
    method = get_method(config.method, config)
    if teacher is None:  # before the data: a teacher file that does not fit is refused without loading it
        teacher = load_teacher(config, method)
    if data is None:
        data_dir = config.data.data_dir or None
        data = tuple(load_split(config.data.source, split, data_dir, download=config.data.download)
                     for split in ("train", "test"))
    train, test = data
    if teacher is not None and teacher.model.num_classes != train.num_classes:
        raise UserError(f"the teacher {config.teacher.checkpoint} has {teacher.model.num_classes} classes, the "
                        f"dataset {train.num_classes}")
    pipeline = DataPipeline.from_config(config)
    spe = pipeline.steps_per_epoch(len(train), config.batch_size)
    if spe < 1 or len(train) < config.batch_size:
        raise UserError(f"batch_size {config.batch_size} exceeds the {len(train)} training examples")
    last_batch_size = pipeline.last_batch_size(len(train), config.batch_size)
    return Setup(student=get_model(config.model, train.num_classes, dtype=COMPUTE_DTYPES[config.dtype]),
                 method=method, teacher=teacher,
                 optimizer=make_optimizer(config, spe), train=train, test=test, steps_per_epoch=spe,
                 mesh=mesh, pipeline=pipeline,
                 last_batch_size=0 if last_batch_size == config.batch_size else last_batch_size)


# XLA options for the one-off program of `create_train_state` on CPU (fast to compile, slower to run)
INITIAL_STATE_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_train_state(setup: Setup, config) -> TrainState:
    """Initial state: the seed's init for the student, the method's modules and state from a shape probe.

    One jitted program: run op by op, the initializers and the probe's forward passes compiled one small
    program per operation and shape (~300 for a ResNet and KD, about 10 s on CPU). It runs once, so on CPU it
    is compiled without XLA's backend optimizations: 3.6 s instead of 12 s for wrn40_2 at batch 64, and 0.24 s
    instead of 0.05 s to run."""
    options = INITIAL_STATE_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(functools.partial(_initial_state, setup, config), compiler_options=options)(
        *_initial_state_inputs(setup, config))


def train_state_layout(setup: Setup, config) -> TrainState:
    """The initial state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves): traced, never compiled or run."""
    return jax.eval_shape(functools.partial(_initial_state, setup, config), *_initial_state_inputs(setup, config))


def _initial_state_inputs(setup: Setup, config) -> tuple:
    """`_initial_state`'s array inputs: the run's seed key, the first `batch_size` examples, the teacher."""
    return (jax.random.PRNGKey(config.seed), setup.train.images[: config.batch_size],
            setup.train.labels[: config.batch_size], setup.train.index[: config.batch_size],
            setup.teacher.variables if setup.teacher else None)


def _initial_state(setup: Setup, config, seed_key, images, labels, index, teacher_variables) -> TrainState:
    """`create_train_state`'s computation, from the run's seed key and the first `batch_size` examples."""
    init_rng, step_rng = jax.random.split(seed_key)
    student_rng, method_rng, probe_rng, probe_batch_rng = jax.random.split(init_rng, 4)
    sample = setup.pipeline.augment(probe_rng, images)
    student_variables = setup.student.init(student_rng, sample, train=False)
    student_out, _ = apply_module(setup.student, student_variables, sample, train=True, method=setup.student.forward)
    student_out = float32_outputs(student_out)
    teacher_out = float32_outputs(apply_module(setup.teacher.model, teacher_variables, sample, train=False,
                                               method=setup.teacher.model.forward)[0] if setup.teacher else None)
    batch = Batch(sample, labels, index, probe_batch_rng)
    method_init = setup.method.initialize(method_rng, Probe(student_out, teacher_out, batch, setup.train.labels,
                                                            setup.train.num_classes))
    params = {"student": student_variables["params"], "method": method_init.variables.get("params", {})}
    batch_stats = {"student": student_variables["batch_stats"],
                   "method": method_init.variables.get("batch_stats", {})}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=setup.optimizer.init(params), method_state=method_init.state, rng=step_rng)


def make_update(setup: Setup, config):
    """update(state, batch, teacher_variables) -> (state, metrics): one SGD step on a prepared batch.

    The loss is `gamma * CE + alpha * KD + beta * method term`; the teacher runs in eval mode and gets no
    gradient. Pure and unjitted: `make_train_step` wraps it, and the parity tests call it on fixed batches."""
    student, method, teacher = setup.student, setup.method, setup.teacher
    loss_weights = config.loss

    def update(state: TrainState, batch: Batch, teacher_variables):
        # the teacher's outputs enter the terms in float32 and without gradient
        teacher_out = (jax.lax.stop_gradient(float32_outputs(apply_module(
            teacher.model, teacher_variables, batch.images, train=False, method=teacher.model.forward)[0]))
                       if teacher else None)

        def loss_fn(params):
            student_out, student_stats = apply_module(
                student, {"params": params["student"], "batch_stats": state.batch_stats["student"]},
                batch.images, train=True, method=student.forward)
            student_out = float32_outputs(student_out)  # the one cast of the student's outputs for the losses
            ce = (mixed_cross_entropy(student_out.logits, batch.labels, batch.partners, batch.lam)
                  if config.saliencymix else cross_entropy(student_out.logits, batch.labels))
            kd = kd_term(student_out, teacher_out, loss_weights) if teacher else jnp.zeros((), jnp.float32)
            method_variables = {"params": params["method"], "batch_stats": state.batch_stats["method"]}
            method_out = method.term(method_variables, state.method_state, student_out, teacher_out, batch,
                                     train=True).completed(method_variables, state.method_state)
            loss = loss_weights.gamma * ce + loss_weights.alpha * kd + loss_weights.beta * method_out.term
            correct = jnp.sum(jnp.argmax(student_out.logits, -1) == batch.labels)
            batch_stats = {"student": student_stats, "method": method_out.batch_stats}
            metrics = dict(loss=loss, ce=ce, kd=kd, term=method_out.term, correct=correct)
            metrics.update({f"{method.name}_{name}": value for name, value in method_out.metrics.items()})
            return loss, (batch_stats, method_out.state, metrics)

        grads, (batch_stats, method_state, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state, method_state=method_state)
        return state, metrics

    return update


def make_train_step(setup: Setup, config, num_steps: int = 1, unroll: bool | None = None,
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
    update = make_update(setup, config)
    spe, pipeline = setup.steps_per_epoch, setup.pipeline
    batch_size = config.batch_size if batch_size is None else batch_size
    if unroll is None:
        unroll = setup.platform == "cpu"
    state_sharding = replicated(setup.mesh)
    batch_sharding = batch_sharded(setup.mesh) if batch_size % setup.mesh.devices.size == 0 else state_sharding

    def train_step(state: TrainState, sums, teacher_variables, images, labels, index, permutation):
        # Each device gathers and augments only its rows of the global batch.
        batch = prepare_batch(pipeline, config, state.rng, state.step, permutation, images, labels, index,
                              batch_size, batch_sharding, spe)
        state, metrics = update(state, batch, teacher_variables)
        sums = {name: sums[name] + metrics[name].astype(jnp.float32) for name in setup.metric_names}
        return state, sums

    def train_steps(state: TrainState, sums, *inputs):
        if num_steps == 1:
            return train_step(state, sums, *inputs)

        def body(carry, _):
            return train_step(*carry, *inputs), None

        (state, sums), _ = jax.lax.scan(body, (state, sums), length=num_steps, unroll=bool(unroll))
        return state, sums

    return jax.jit(train_steps, donate_argnums=(0, 1), out_shardings=(state_sharding, state_sharding),
                   compiler_options=compiler_options(setup.mesh))


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


def train_programs(setup: Setup, config) -> TrainPrograms:
    """The loop's train programs (one step per call, and `steps_per_dispatch` per call), built on first use."""
    return TrainPrograms(functools.partial(make_train_step, setup, config),
                         steps_per_dispatch(config, setup.platform))


def zero_sums(setup: Setup):
    return jax.device_put({name: jnp.zeros((), jnp.float32) for name in setup.metric_names},
                          replicated(setup.mesh))


def train_and_evaluate(config, workdir) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final evaluation."""
    workdir = check_output_directory(workdir, "--workdir")
    with contextlib.ExitStack() as cleanup:  # undone in reverse order, however the run ends
        lock = WorkdirLock(workdir, active=distributed.is_primary())
        cleanup.callback(lock.release)
        if workdir.is_dir():
            lock.acquire()  # a second run on a live workdir is refused before it loads anything
            check_config_json(config, workdir)  # so is another run's workdir, or an unreadable config.json
        setup = build(config)  # every user error surfaces here, before any compile
        check_epochs(config, workdir, setup.steps_per_epoch)  # a finished run's config is never shortened
        # The method checks its settings against the models' shapes as the state is made (FitNets' hint layer):
        # before the workdir exists, so that a refused run leaves nothing behind. `_run` takes the state out of
        # the dict, so that no reference to the initial state outlives its placement on the devices.
        initial = {"state": create_train_state(setup, config)}
        create_workdir(workdir)
        lock.acquire()
        save_config(config, workdir)
        checkpoints = RunCheckpoints(workdir, config.keep_checkpoints)
        cleanup.callback(checkpoints.close)
        # metrics that a killed run logged after the checkpoint this run resumes from are dropped
        log = MetricLog(workdir, active=distributed.is_primary(),
                        resume_step=log_resume_step(setup, config, workdir, checkpoints.latest_step()), config=config)
        cleanup.callback(log.close)
        stop = StopRequest()
        cleanup.callback(stop.restore)
        return _run(setup, config, initial, workdir, log, checkpoints, stop)


def first_logged_step(setup: Setup, config) -> int:
    """The step of a run's first row, the teacher's: 0, or before an init stage's first row (its steps are
    `init_step - its total`: -total + 1 .. 0), so that the row survives a resume anywhere after it."""
    stage = setup.method.init_stage(config)
    return -init_stage_steps(setup, stage) if stage is not None else 0


def _say(text: str) -> None:
    """A message for the user, printed once (by process 0)."""
    distributed.print_once(text, flush=True)


def _run(setup: Setup, config, initial: dict, workdir: Path, log: MetricLog, checkpoints: RunCheckpoints,
         stop: StopRequest):
    mesh, spe = setup.mesh, setup.steps_per_epoch
    on_all_devices = replicated(mesh)
    total_steps = spe * config.epochs

    state = jax.device_put(initial.pop("state"), on_all_devices)
    progress = {"best_top1": 0.0, "best_epoch": 0}
    resumed = checkpoints.latest_step() is not None
    if resumed:
        state, progress = checkpoints.restore(state)
        done = int(state.step)
        where = f"epoch {done // spe + 1} of {config.epochs}" if done < total_steps else "training already complete"
        _say(f"resumed from {checkpoints.directory} at step {done} ({where})")

    teacher_variables = None
    if setup.teacher:
        teacher_variables = jax.device_put(setup.teacher.variables, on_all_devices)
        if log.resume_step is None:  # a new start (a run resumed in training or in the init stage has the row)
            result = evaluate_split(setup.teacher.model, teacher_variables, setup.test.images,
                                    setup.test.labels, config.eval_batch_size, mesh=mesh,
                                    normalization=setup.pipeline.normalization)
            _say(f"teacher {setup.teacher.arch}: test top-1 {result['top1']:.2f}")
            log.write(first_logged_step(setup, config), "teacher", {"top1": result["top1"], "top5": result["top5"]})

    images, labels, index = jax.device_put((setup.train.images, setup.train.labels, setup.train.index),
                                           on_all_devices)
    if not resumed and setup.method.init_stage(config) is not None:  # a train checkpoint: the stage is done
        state = run_init_stage(setup, config, state, teacher_variables, (images, labels, index), workdir, log,
                               stop, _say)
        checkpoints.save(state, progress)  # at step 0: a run stopped from here on never reruns the stage
    programs = train_programs(setup, config)
    last_batch_program = (make_train_step(setup, config, batch_size=setup.last_batch_size)
                          if setup.partial_last_batch else None)
    permutation_of = jax.jit(functools.partial(epoch_permutation, num_examples=len(setup.train)),
                             out_shardings=on_all_devices)
    base_key = jax.random.PRNGKey(config.seed)
    lr_at = config_learning_rate_schedule(config, spe)  # the optimizer's schedule: the lr each step used
    sums = zero_sums(setup)
    eval_logits = make_eval_logits(setup)
    step = int(state.step)
    last_fetch_step, last_fetch_time, examples_since_fetch = step, time.perf_counter(), 0
    result = None

    def fetch_and_log(sums, step):
        nonlocal last_fetch_step, last_fetch_time, examples_since_fetch
        values = jax.device_get(sums)
        count = step - last_fetch_step
        now = time.perf_counter()
        if count == 0:
            return zero_sums(setup), None
        means = {name: float(values[name]) / count for name in setup.metric_names if name != "correct"}
        means["accuracy"] = 100.0 * float(values["correct"]) / examples_since_fetch
        means["lr"] = float(lr_at(step - 1))
        means["images_per_s"] = examples_since_fetch / max(now - last_fetch_time, 1e-9)
        if not math.isfinite(means["loss"]):
            last = checkpoints.latest_step()
            kept = (f"the last good checkpoint (step {last}) is kept: running the same command resumes there"
                    if last is not None else "no checkpoint had been saved yet")
            raise UserError(f"the loss became {means['loss']} before step {step}; stopping ({kept})")
        checkpoints.check()  # a background save that failed (a full disk) stops the run here, within seconds
        log.write(step, "train", means)
        last_fetch_step, last_fetch_time, examples_since_fetch = step, now, 0
        return zero_sums(setup), means

    bar = None
    # Output to a file or pipe (nohup, a cluster job) gets a progress line at every metrics fetch instead of a bar.
    progress_lines = config.progress_bar and distributed.is_primary() and not sys.stdout.isatty()
    while step < total_steps:
        epoch = step // spe  # 0-based
        permutation = permutation_of(base_key, epoch)
        if config.progress_bar and distributed.is_primary():
            from tqdm import tqdm
            bar = tqdm(total=spe, initial=step % spe, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stdout, disable=None)  # off when not a TTY
        means = None
        for size, fetch in dispatch_plan(step, (epoch + 1) * spe, spe, config.log_every_steps,
                                         programs.steps_per_dispatch, last_step_alone=setup.partial_last_batch):
            if stop.before_dispatch():
                break
            if setup.partial_last_batch and step % spe == spe - 1:  # the epoch's last, partial batch
                program, examples = last_batch_program, setup.last_batch_size
            else:
                program, examples = programs[size], size * config.batch_size
            state, sums = program(state, sums, teacher_variables, images, labels, index, permutation)
            step += size
            examples_since_fetch += examples
            if bar is not None:
                bar.update(size)
            if fetch:
                sums, means = fetch_and_log(sums, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.1f}",
                                    img_s=f"{means['images_per_s']:.0f}")
                if progress_lines:
                    print(f"epoch {epoch + 1}/{config.epochs} step {step - epoch * spe}/{spe}: loss "
                          f"{means['loss']:.4f} acc {means['accuracy']:.2f} lr {means['lr']:.4g} "
                          f"{means['images_per_s']:.0f} images/s", flush=True)
        if bar is not None:
            bar.close()
        # A stop that arrives during an epoch's last steps lets the epoch end as usual (its evaluation, then the
        # checkpoint): a checkpoint at an epoch's end must follow that epoch's evaluation, which resuming from it
        # would never run.
        epoch_complete = step == (epoch + 1) * spe
        if stop.requested and not epoch_complete:
            if step > last_fetch_step:
                sums, _ = fetch_and_log(sums, step)  # also refuses to save a diverged state
            stop.save_and_exit(checkpoints, state, progress, f"a checkpoint at step {step}", _say)

        epoch_done = step // spe
        if epoch_done % config.eval_every_epochs == 0 or epoch_done == config.epochs:
            if stop.requested and step < total_steps:
                _say(f"{stop.signal.name}: epoch {epoch_done} has ended: evaluating it before its checkpoint is saved")
            results = evaluate_classifiers(eval_logits, eval_variables(state), setup.test.images,
                                           setup.test.labels, config.eval_batch_size, mesh=mesh,
                                           normalization=setup.pipeline.normalization)
            result = results.pop("student")
            if result["top1"] > progress["best_top1"]:
                progress = {"best_top1": result["top1"], "best_epoch": epoch_done}
            extra = {f"{name}_top1": r["top1"] for name, r in results.items()}
            log.write(step, "eval", {"epoch": epoch_done, "top1": result["top1"], "top5": result["top5"],
                                     "best_top1": progress["best_top1"], **extra})
            train_text = f"train loss {means['loss']:.4f} acc {means['accuracy']:.2f}, " if means else ""
            extra_text = "".join(f", {name} {r['top1']:.2f}" for name, r in results.items())
            _say(f"epoch {epoch_done}/{config.epochs}: {train_text}test top-1 {result['top1']:.2f} "
                 f"(best {progress['best_top1']:.2f} at epoch {progress['best_epoch']}){extra_text}")
        if stop.requested and step < total_steps:  # (at the last epoch's end the run is done: it finishes)
            stop.save_and_exit(checkpoints, state, progress, f"a checkpoint at step {step}", _say)
        if epoch_done % config.checkpoint_every_epochs == 0 or epoch_done == config.epochs:
            checkpoints.save(state, progress)

    if result is None:  # resumed after the last epoch had finished
        result = evaluate_split(setup.student, state.student_variables(), setup.test.images, setup.test.labels,
                                config.eval_batch_size, mesh=mesh, normalization=setup.pipeline.normalization)
    checkpoints.wait_until_saved()  # the last checkpoint is on disk (or its failure is reported) before the export
    export_models(setup, config, state, workdir, result, progress)
    return {"last_top1": result["top1"], "best_top1": progress["best_top1"], "step": step}


TRAIN_USAGE = "usage: python -m jaxkd.train --config configs/NAME.py --workdir DIR [--config.key=value ...]"


def _define_train_flags(flag_values) -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and exports go", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0 "
                        "(docs/scale_out.md)", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "multi-process runs: how many processes", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "multi-process runs: this process's id, 0..num_processes-1",
                         flag_values=flag_values)


def parse_command_line(argv):
    """The parsed flags of `python -m jaxkd.train` (`config`, `workdir` and the multi-process settings); a bad
    command line or config raises UserError."""
    flag_values = parse_config_command_line(argv, _define_train_flags, TRAIN_USAGE)
    if not flag_values.workdir:
        raise UserError(TRAIN_USAGE)
    return flag_values


def _train_command(argv) -> None:
    flags_ = parse_command_line(argv)
    distributed.initialize(flags_.coordinator_address, flags_.num_processes, flags_.process_id)
    train_and_evaluate(flags_.config, flags_.workdir)


def main(argv=None) -> int:
    try:
        return run_command(_train_command, sys.argv if argv is None else argv)
    except KeyboardInterrupt:  # a second Ctrl-C before the stop's checkpoint was being written
        print("interrupted: stopped without saving; the same command resumes from the last complete checkpoint",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    host_allocator.keep_freed_memory()  # before JAX starts its threads
    exit_process(main())
