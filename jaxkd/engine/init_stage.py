"""RepDistiller's init stage (`helper/pretrain.py` `init`) as an engine capability: a method that declares one
(`Method.init_stage`, an `InitStage`) has it run by `jaxkd.train` before normal training, on `Method.init_loss`
alone, with its own checkpoints (`InitState` in `WORKDIR/init_checkpoints`) so that a stopped run resumes inside
it. What trains, the modes, the optimizer, the data, the metrics and resume: docs/methods.md, "The init stage".
"""


import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.dispatch import TrainPrograms
from jaxkd.engine.epoch_loop import EpochLoop, RunContext
from jaxkd.engine.mesh import batch_sharded, replicated
from jaxkd.engine.train_batch import prepare_batch
from jaxkd.engine.train_state import TrainState
from jaxkd.errors import UserError
from jaxkd.io.run_checkpoint import RunCheckpoints
from jaxkd.methods.base import INIT_MODULES, Batch, InitStage, apply_module, float32_outputs
from jaxkd.models.batchnorm import BatchNorm

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


def initial_init_state(setup, state: TrainState, stage: InitStage) -> InitState:
    """The stage's state at its start: the train state's student, the method's init modules, SGD at rest."""
    modules = state.method_state[INIT_MODULES]
    params = {"student": state.params["student"], "modules": modules.get("params", {})}
    batch_stats = {"student": state.batch_stats["student"], "modules": modules.get("batch_stats", {})}
    return InitState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=init_optimizer(stage, setup.config, params).init(params))


def merged_into(state: TrainState, init_state: InitState) -> TrainState:
    """The train state with the stage's results: the student's variables and the method's init modules."""
    method_state = dict(state.method_state)
    method_state[INIT_MODULES] = {"params": init_state.params["modules"],
                                  "batch_stats": init_state.batch_stats["modules"]}
    return state.replace(params=dict(state.params, student=init_state.params["student"]),
                         batch_stats=dict(state.batch_stats, student=init_state.batch_stats["student"]),
                         method_state=method_state)


def make_init_update(setup, stage: InitStage):
    """update(init_state, batch, teacher_variables) -> (init_state, loss): one step of RepDistiller's `init`
    loop on a prepared batch. Pure and unjitted (the parity tests call it on fixed batches)."""
    student, method, teacher = setup.student, setup.method, setup.teacher
    outside = frozenset(OUTSIDE_FEATURE_MODULES)

    def update(init_state: InitState, batch: Batch, teacher_variables):
        teacher_out = jax.lax.stop_gradient(float32_outputs(apply_module(
            teacher.model, teacher_variables, batch.images, train=False, method=teacher.model.forward)[0]))
        optimizer = init_optimizer(stage, setup.config, init_state.params)

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


def make_init_step(setup, stage: InitStage, batch_size: int):
    """step(init_state, loss_sum, key, teacher_variables, images, labels, index, permutation) -> (init_state,
    loss_sum), jitted, state and sum donated: one init step on batches of `batch_size` (the run's, or the
    epoch's partial last one)."""
    update = make_init_update(setup, stage)
    state_sharding = replicated(setup.mesh)
    batch_sharding = batch_sharded(setup.mesh) if batch_size % setup.mesh.devices.size == 0 else state_sharding

    def init_step(init_state, loss_sum, key, teacher_variables, images, labels, index, permutation):
        batch = prepare_batch(setup, key, init_state.step, permutation, images, labels, index, batch_size,
                              batch_sharding)
        init_state, loss = update(init_state, batch, teacher_variables)
        return init_state, loss_sum + loss.astype(jnp.float32)

    return jax.jit(init_step, donate_argnums=(0, 1), out_shardings=(state_sharding, state_sharding),
                   compiler_options=compiler_options(setup.mesh, models=setup.models))


def total_steps(setup, stage: InitStage) -> int:
    return stage.epochs * setup.steps_per_epoch


def log_resume_step(setup, workdir, train_checkpoint_step: int | None) -> int | None:
    """The step metrics.jsonl resumes from: the train checkpoint's, else (inside the init stage) the init
    checkpoint's, `init_step - total`, else None (a new start)."""
    config = setup.config
    stage = setup.method.init_stage(config)
    if train_checkpoint_step is not None or stage is None:
        return train_checkpoint_step
    checkpoints = RunCheckpoints(workdir, config.keep_checkpoints, "init_checkpoints")
    try:
        init_step = checkpoints.latest_step()
    finally:
        checkpoints.close()
    return None if init_step is None else init_step - total_steps(setup, stage)


def run_init_stage(setup, state: TrainState, teacher_variables, data, context: RunContext) -> TrainState:
    """Runs (or resumes) the method's init stage; returns the train state with its results (`merged_into`).
    `data`: (images, labels, index) of the training set on the devices. A stop request saves the stage's
    state and exits as the training loop does."""
    config = setup.config
    stage = setup.method.init_stage(config)
    if setup.teacher is None:
        raise UserError(f"method {setup.method.name!r}: its init stage needs a teacher")
    init_state = jax.device_put(initial_init_state(setup, state, stage), replicated(setup.mesh))
    checkpoints = RunCheckpoints(context.workdir, config.keep_checkpoints, "init_checkpoints")
    try:
        if checkpoints.latest_step() is not None:
            init_state, _ = checkpoints.restore(init_state)
            context.say(f"resumed the init stage from {checkpoints.directory} at init step {int(init_state.step)}")
        step = int(init_state.step)
        loop = InitLoop(setup, context, checkpoints, stage, state.rng, teacher_variables, data, step)
        if step == 0:
            context.say(f"init stage of {setup.method.name}: {stage.epochs} epochs at lr {stage.learning_rate}")
        init_state, _ = loop.run(init_state, step)
    finally:
        checkpoints.close()
    return merged_into(state, init_state)


class InitLoop(EpochLoop):
    """The init stage's epochs: one step per call, rows of kind "init" at the steps `init_step - total` (<= 0),
    a line per epoch, a checkpoint in `init_checkpoints` after every epoch but the last (whose state goes into the
    train state's checkpoint at step 0), and a stop saves at once, even at an epoch's end."""

    label = "init epoch"
    finishes_epoch_before_stop = False

    def __init__(self, setup, context: RunContext, checkpoints: RunCheckpoints, stage: InitStage, rng,
                 teacher_variables, data: tuple, step: int):
        key = jax.random.fold_in(rng, INIT_STREAM)
        full_batch_program = make_init_step(setup, stage, setup.config.batch_size)
        last_batch_program = (make_init_step(setup, stage, setup.last_batch_size)
                              if setup.partial_last_batch else None)
        super().__init__(setup, context, checkpoints, stage.epochs,
                         TrainPrograms(lambda num_steps: full_batch_program, steps_per_dispatch=1),
                         last_batch_program, (key, teacher_variables, *data), jax.random.fold_in(key, 1), step)
        self.stage = stage

    def new_sums(self):
        return jax.device_put(jnp.zeros((), jnp.float32), replicated(self.setup.mesh))

    def means(self, values, count: int, step: int) -> dict:
        return {"init_step": step, "init_epoch": step / self.setup.steps_per_epoch,
                "loss": float(values) / count, "lr": self.stage.learning_rate}

    def write(self, step: int, means: dict) -> None:
        self.context.log.write(step - self.total, "init", means)

    def diverged(self, loss: float, step: int) -> str:
        return f"the init stage's loss became {loss} before init step {step}; stopping"

    def postfix(self, means: dict) -> dict:
        return dict(loss=f"{means['loss']:.4f}")

    def progress_text(self, means: dict) -> str:
        return f"loss {means['loss']:.4f}"

    def end_epoch(self, state, step: int, means: dict | None) -> None:
        self.context.say(f"init epoch {step // self.setup.steps_per_epoch}/{self.epochs}: loss {means['loss']:.4f}")

    def checkpoint_due(self, step: int) -> bool:
        return step < self.total  # the last epoch's state goes into the train state's checkpoint at step 0

    def checkpoint_name(self, step: int) -> str:
        return f"the init stage at init step {step}"
