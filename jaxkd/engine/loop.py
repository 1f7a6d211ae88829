"""The training loop: `train_and_evaluate` trains (or resumes) a run in its workdir.

The host only decides when to log, evaluate and checkpoint; the steps run on the device (`jaxkd.engine.step`).
Re-running the same command resumes from the workdir's latest checkpoint, exactly: the data order, random numbers,
optimizer state and BN statistics continue as if never stopped. SIGTERM (preemption) and Ctrl-C save a checkpoint
before exiting (`jaxkd.io.stop_request`). The workdir receives `config.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/` (train state), and at the end `model/` (the student as a model checkpoint, usable as a teacher or
by `jaxkd.tools.evaluate`) and `student.pth` (seed layout); `jaxkd.io.workdir` writes them."""

import contextlib
import functools
import math
import sys
import time
from pathlib import Path

import jax

from jaxkd.data import epoch_permutation
from jaxkd.engine import distributed
from jaxkd.engine.dispatch import dispatch_plan
from jaxkd.engine.evaluation import evaluate_classifiers, evaluate_split
from jaxkd.engine.init_stage import log_resume_step, run_init_stage, total_steps as init_stage_steps
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.mesh import replicated
from jaxkd.engine.optimizer import config_learning_rate_schedule
from jaxkd.engine.setup import Setup, build, say
from jaxkd.engine.step import eval_variables, make_eval_logits, make_train_step, train_programs, zero_sums
from jaxkd.errors import UserError
from jaxkd.io.metric_log import MetricLog
from jaxkd.io.run_checkpoint import RunCheckpoints
from jaxkd.io.safe_write import check_output_directory
from jaxkd.io.stop_request import StopRequest
from jaxkd.io.workdir import (WorkdirLock, check_config_json, check_epochs, create_workdir, export_models,
                              save_config)


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
        say(f"resumed from {checkpoints.directory} at step {done} ({where})")

    teacher_variables = None
    if setup.teacher:
        teacher_variables = jax.device_put(setup.teacher.variables, on_all_devices)
        if log.resume_step is None:  # a new start (a run resumed in training or in the init stage has the row)
            result = evaluate_split(setup.teacher.model, teacher_variables, setup.test.images,
                                    setup.test.labels, config.eval_batch_size, mesh=mesh,
                                    normalization=setup.pipeline.normalization)
            say(f"teacher {setup.teacher.arch}: test top-1 {result['top1']:.2f}")
            log.write(first_logged_step(setup, config), "teacher", {"top1": result["top1"], "top5": result["top5"]})

    images, labels, index = jax.device_put((setup.train.images, setup.train.labels, setup.train.index),
                                           on_all_devices)
    if not resumed and setup.method.init_stage(config) is not None:  # a train checkpoint: the stage is done
        state = run_init_stage(setup, config, state, teacher_variables, (images, labels, index), workdir, log,
                               stop, say)
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
            stop.save_and_exit(checkpoints, state, progress, f"a checkpoint at step {step}", say)

        epoch_done = step // spe
        if epoch_done % config.eval_every_epochs == 0 or epoch_done == config.epochs:
            if stop.requested and step < total_steps:
                say(f"{stop.signal.name}: epoch {epoch_done} has ended: evaluating it before its checkpoint is saved")
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
            say(f"epoch {epoch_done}/{config.epochs}: {train_text}test top-1 {result['top1']:.2f} "
                 f"(best {progress['best_top1']:.2f} at epoch {progress['best_epoch']}){extra_text}")
        if stop.requested and step < total_steps:  # (at the last epoch's end the run is done: it finishes)
            stop.save_and_exit(checkpoints, state, progress, f"a checkpoint at step {step}", say)
        if epoch_done % config.checkpoint_every_epochs == 0 or epoch_done == config.epochs:
            checkpoints.save(state, progress)

    if result is None:  # resumed after the last epoch had finished
        result = evaluate_split(setup.student, state.student_variables(), setup.test.images, setup.test.labels,
                                config.eval_batch_size, mesh=mesh, normalization=setup.pipeline.normalization)
    checkpoints.wait_until_saved()  # the last checkpoint is on disk (or its failure is reported) before the export
    export_models(setup, config, state, workdir, result, progress)
    return {"last_top1": result["top1"], "best_top1": progress["best_top1"], "step": step}
