"""The training loop: `train_and_evaluate` trains (or resumes) a run in its workdir.

The host only decides when to log, evaluate and checkpoint; the steps run on the device (`jaxkd.engine.step`).
Re-running the same command resumes from the workdir's latest checkpoint, exactly: the data order, random numbers,
optimizer state and BN statistics continue as if never stopped. SIGTERM (preemption) and Ctrl-C save a checkpoint
before exiting (`jaxkd.io.stop_request`). The workdir receives `config.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/` (train state), and at the end `model/` (the student as a model checkpoint, usable as a teacher or
by `jaxkd.tools.evaluate`) and `student.pth` (seed layout); `jaxkd.io.workdir` writes them."""

import collections
import contextlib

import jax

from jaxkd.engine import distributed
from jaxkd.engine.epoch_loop import EpochLoop, RunContext
from jaxkd.engine.evaluation import evaluate_batches, evaluate_classifiers, evaluate_model_batches, evaluate_split
from jaxkd.engine.init_stage import log_resume_step, run_init_stage
from jaxkd.engine.init_stage import total_steps as init_stage_steps
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.mesh import batch_sharded, replicated, train_state_sharding
from jaxkd.engine.optimizer import config_learning_rate_schedule
from jaxkd.engine.setup import Setup, build
from jaxkd.engine.step import eval_variables, make_eval_logits, make_train_step, train_programs, zero_sums
from jaxkd.errors import UserError
from jaxkd.io.metric_log import MetricLog
from jaxkd.io.run_checkpoint import RunCheckpoints, saved_state_metadata
from jaxkd.io.safe_write import check_output_directory
from jaxkd.io.stop_request import StopRequest
from jaxkd.io.workdir import WorkdirLock, check_config_json, check_epochs, create_workdir, export_models, save_config


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
        saved = saved_state_metadata(workdir)  # a checkpoint's method state this run cannot restore: refused now
        if saved is not None:
            setup.method.check_saved_state(saved.get("method_state", {}), len(setup.train_labels))
        check_epochs(config, workdir, setup.steps_per_epoch)  # a finished run's config is never shortened
        if setup.stream is not None:
            setup.stream.check_skipped_list(workdir)  # data.skip_unreadable: a resume skips what its start skipped
        # The method checks its settings against the models' shapes as the state is made (FitNets' hint layer):
        # before the workdir exists, so that a refused run leaves nothing behind. `_run` takes the state out of
        # the dict, so that no reference to the initial state outlives its placement on the devices.
        initial = {"state": create_train_state(setup)}
        create_workdir(workdir)
        lock.acquire()
        save_config(config, workdir)
        if setup.stream is not None:
            setup.stream.write_skipped_list(workdir)
        checkpoints = RunCheckpoints(workdir, config.keep_checkpoints)
        cleanup.callback(checkpoints.close)
        # metrics that a killed run logged after the checkpoint this run resumes from are dropped
        log = MetricLog(workdir, active=distributed.is_primary(),
                        resume_step=log_resume_step(setup, workdir, checkpoints.latest_step()), config=config)
        cleanup.callback(log.close)
        stop = StopRequest()
        cleanup.callback(stop.restore)
        return _run(setup, initial, RunContext(workdir, log, checkpoints, stop))


def first_logged_step(setup: Setup) -> int:
    """The step of a run's first row, the teacher's: 0, or before an init stage's first row (its steps are
    `init_step - its total`: -total + 1 .. 0), so that the row survives a resume anywhere after it."""
    stage = setup.method.init_stage(setup.config)
    return -init_stage_steps(setup, stage) if stage is not None else 0


class TrainLoop(EpochLoop):
    """Training's epochs: the train programs (`steps_per_dispatch` steps per call where they fit), rows of kind
    "train", the evaluation every `eval_every_epochs` (and of the last epoch), which keeps the best top-1 in
    `progress`, and a checkpoint every `checkpoint_every_epochs`."""

    def __init__(self, setup: Setup, context: RunContext, step: int, teacher_variables, data: tuple,
                 progress: dict):
        config = setup.config
        last_batch_program = (make_train_step(setup, batch_size=setup.last_batch_size)
                              if setup.partial_last_batch else None)
        super().__init__(setup, context, context.checkpoints, config.epochs, train_programs(setup),
                         last_batch_program, (teacher_variables, *data), jax.random.PRNGKey(config.seed), step)
        self.progress = progress
        self.lr_at = config_learning_rate_schedule(config, setup.steps_per_epoch)  # the lr each step used
        self.eval_logits = make_eval_logits(setup)
        self.result = None  # the last evaluation's student result

    def new_sums(self):
        return zero_sums(self.setup)

    def means(self, values, count: int, step: int) -> dict:
        means = {name: float(values[name]) / count for name in self.setup.metric_names if name != "correct"}
        means["accuracy"] = 100.0 * float(values["correct"]) / self.examples
        means["lr"] = float(self.lr_at(step - 1))
        return means

    def write(self, step: int, means: dict) -> None:
        self.context.log.write(step, "train", means)

    def diverged(self, loss: float, step: int) -> str:
        last = self.checkpoints.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept: running the same command resumes there"
                if last is not None else "no checkpoint had been saved yet")
        return f"the loss became {loss} before step {step}; stopping ({kept})"

    def postfix(self, means: dict) -> dict:
        return dict(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.1f}", img_s=f"{means['images_per_s']:.0f}")

    def progress_text(self, means: dict) -> str:
        return (f"loss {means['loss']:.4f} acc {means['accuracy']:.2f} lr {means['lr']:.4g} "
                f"{means['images_per_s']:.0f} images/s")

    def end_epoch(self, state, step: int, means: dict | None) -> None:
        setup, config, stop = self.setup, self.config, self.context.stop
        epoch_done = step // setup.steps_per_epoch
        if not (epoch_done % config.eval_every_epochs == 0 or epoch_done == config.epochs):
            return
        if stop.requested and step < self.total:
            self.context.say(f"{stop.signal.name}: epoch {epoch_done} has ended: evaluating it before its checkpoint "
                             f"is saved")
        results = self.evaluate(state)
        result = self.result = results.pop("student")
        progress = self.progress
        if result["top1"] > progress["best_top1"]:
            progress = self.progress = {"best_top1": result["top1"], "best_epoch": epoch_done}
        extra = {f"{name}_top1": r["top1"] for name, r in results.items()}
        self.context.log.write(step, "eval", {"epoch": epoch_done, "top1": result["top1"], "top5": result["top5"],
                                              "best_top1": progress["best_top1"], **extra})
        train_text = f"train loss {means['loss']:.4f} acc {means['accuracy']:.2f}, " if means else ""
        extra_text = "".join(f", {name} {r['top1']:.2f}" for name, r in results.items())
        self.context.say(f"epoch {epoch_done}/{config.epochs}: {train_text}test top-1 {result['top1']:.2f} "
            f"(best {progress['best_top1']:.2f} at epoch {progress['best_epoch']}){extra_text}")

    def evaluate(self, state) -> dict:
        """{classifier: summary} of the student (and a method's extra classifiers) on the test split."""
        setup = self.setup
        return evaluate_classifiers(self.eval_logits, eval_variables(state), setup.test.images, setup.test.labels,
                                    self.config.eval_batch_size, mesh=setup.mesh,
                                    normalization=setup.pipeline.normalization, models=setup.evaluated_models)

    def checkpoint_due(self, step: int) -> bool:
        epoch_done = step // self.setup.steps_per_epoch
        return epoch_done % self.config.checkpoint_every_epochs == 0 or epoch_done == self.config.epochs

    def checkpoint_name(self, step: int) -> str:
        return f"a checkpoint at step {step}"


class StreamingTrainLoop(TrainLoop):
    """Training's epochs on the streaming path: each call runs one step on the next batch of the loader
    (`batches`, a `jaxkd.data.streaming.TrainIterator`, made from the host's decoded and augmented images) and
    evaluation reads the validation split through the loader.

    Prefetch to the device: after a step is dispatched (it runs asynchronously), the loop takes the loader's next
    batches and puts them on the devices, up to `DEVICE_PREFETCH` ahead, while the step runs; the next call then
    dispatches at once on a batch already there (flax's `jax_utils.prefetch_to_device` does the same with its
    `size`). The loader decodes further ahead by itself (its threads or worker processes and their buffers).
    The position saved in every checkpoint beside the progress (`progress["loader"]`) is that of the steps, not of
    the prefetch: the next step's batch, so that a resumed run reads the batches a straight run would have."""

    DEVICE_PREFETCH = 2  # batches on the devices ahead of the running step (uint8: 38 MB at 256 x 224 px)

    def __init__(self, setup: Setup, context: RunContext, step: int, teacher_variables, batches, progress: dict):
        super().__init__(setup, context, step, teacher_variables, (), progress)
        self.batches = batches
        self.batch_sharding = batch_sharded(setup.mesh)
        self.ready = collections.deque()  # (images, labels, index) on the devices, for the next steps in order

    @property
    def progress(self) -> dict:
        """What a checkpoint saves beside the state: the best top-1 so far and the loader's position at the next
        step (the loader's own, less the batches prefetched)."""
        position = self.batches.get_state()
        return {**self.best, "loader": {**position, "step": position["step"] - len(self.ready)}}

    @progress.setter
    def progress(self, progress: dict) -> None:
        self.best = {key: value for key, value in progress.items() if key != "loader"}

    def prefetch(self, count: int) -> None:
        """Puts the loader's next batches on the devices until `count` wait (or the loader's batches end)."""
        size = self.config.batch_size
        while len(self.ready) < count and self.batches.step < self.batches.num_steps:
            batch = next(self.batches)
            self.ready.append([jax.make_array_from_process_local_data(self.batch_sharding, batch[key],
                                                                      (size,) + batch[key].shape[1:])
                               for key in ("image", "label", "index")])

    def call(self, program, state, permutation):
        self.prefetch(1)
        out = program(state, self.sums, *self.inputs, *self.ready.popleft())
        self.prefetch(self.DEVICE_PREFETCH)  # while the step runs
        return out

    def evaluate(self, state) -> dict:
        return _evaluate_stream(self.setup, self.eval_logits, eval_variables(state))


def _stream_eval_batches(setup: Setup):
    """(this process's batches of the streamed validation split, the global batch size): eval_batch_size rounded
    up to a multiple of the devices, the last batch padded and masked."""
    devices = setup.mesh.devices.size
    batch_size = -(-setup.config.eval_batch_size // devices) * devices
    return setup.stream.eval_batches(batch_size, jax.process_index(), jax.process_count()), batch_size


def _evaluate_stream(setup: Setup, logits_fn, variables) -> dict:
    """{classifier: summary} over the streamed validation split, every image counted once."""
    return evaluate_batches(logits_fn, variables, *_stream_eval_batches(setup), mesh=setup.mesh,
                            normalization=setup.pipeline.normalization, models=setup.evaluated_models)


def _evaluate_model(setup: Setup, model, variables) -> dict:
    """One model's summary on the test split: the arrays held on the device, or the streamed validation split."""
    if setup.stream is None:
        return evaluate_split(model, variables, setup.test.images, setup.test.labels, setup.config.eval_batch_size,
                              mesh=setup.mesh, normalization=setup.pipeline.normalization)
    return evaluate_model_batches(model, variables, *_stream_eval_batches(setup), mesh=setup.mesh,
                                  normalization=setup.pipeline.normalization)


def _train_batches(setup: Setup, progress: dict, step: int):
    """The streaming loader of this process from `step`: at the position a checkpoint saved (`progress`), which
    must be that step's, or from the start."""
    batches = setup.stream.train_iterator(setup.config, jax.process_index(), jax.process_count(), start_step=0)
    saved = progress.get("loader")
    if saved is None and step:
        raise UserError(f"the checkpoint at step {step} holds no streaming loader position: it was not saved by a "
                        f"run on data.source {setup.config.data.source!r}")
    if saved is not None:
        batches.restore(saved)
    if batches.step != step:
        raise UserError(f"the checkpoint's loader position (step {batches.step}) is not its state's step {step}")
    return batches


def _run(setup: Setup, initial: dict, context: RunContext):
    """The run from its initial state (or its latest checkpoint): the teacher's evaluation on a new start, the
    init stage when the method has one, the epochs, then the exports."""
    config, mesh, spe, checkpoints = setup.config, setup.mesh, setup.steps_per_epoch, context.checkpoints
    on_all_devices = replicated(mesh)
    total_steps = spe * config.epochs

    state = initial.pop("state")
    state = jax.device_put(state, train_state_sharding(mesh, state, setup.method))
    progress = {"best_top1": 0.0, "best_epoch": 0}
    resumed = checkpoints.latest_step() is not None
    if resumed:
        state, progress = checkpoints.restore(state)
        done = int(state.step)
        where = f"epoch {done // spe + 1} of {config.epochs}" if done < total_steps else "training already complete"
        context.say(f"resumed from {checkpoints.directory} at step {done} ({where})")

    teacher_variables = None
    if setup.teacher:
        teacher_variables = jax.device_put(setup.teacher.variables, on_all_devices)
        if context.log.resume_step is None:  # a new start (a run resumed in training or in the init stage has the row)
            result = _evaluate_model(setup, setup.teacher.model, teacher_variables)
            context.say(f"teacher {setup.teacher.arch}: test top-1 {result['top1']:.2f}")
            context.log.write(first_logged_step(setup), "teacher",
                              {"top1": result["top1"], "top5": result["top5"]})

    step = int(state.step)
    if setup.stream is not None:  # the host-fed path: batches from the streaming loader (no init stage: `build`)
        with _train_batches(setup, progress, step) as batches:
            loop = StreamingTrainLoop(setup, context, step, teacher_variables, batches, progress)
            state, step = loop.run(state, step)
        result, progress = loop.result, loop.best
    else:
        data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), on_all_devices)
        if not resumed and setup.method.init_stage(config) is not None:  # a train checkpoint: the stage is done
            state = run_init_stage(setup, state, teacher_variables, data, context)
            checkpoints.save(state, progress)  # at step 0: a run stopped from here on never reruns the stage
            step = int(state.step)
        loop = TrainLoop(setup, context, step, teacher_variables, data, progress)
        state, step = loop.run(state, step)
        result, progress = loop.result, loop.progress

    if result is None:  # resumed after the last epoch had finished
        result = _evaluate_model(setup, setup.student, state.student_variables())
    checkpoints.wait_until_saved()  # the last checkpoint is on disk (or its failure is reported) before the export
    export_models(setup, state, context.workdir, result, progress)
    return {"last_top1": result["top1"], "best_top1": progress["best_top1"], "step": step}
