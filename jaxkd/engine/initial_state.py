"""A run's initial train state: the student's init, the method's modules and state from a shape probe."""

import functools

import jax
import jax.numpy as jnp

from jaxkd.engine.mesh import train_state_sharding
from jaxkd.engine.setup import Setup
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, Probe, apply_module
from jaxkd.methods.base import float32_outputs

# XLA options for the one-off program of `create_train_state` on CPU (fast to compile, slower to run)
INITIAL_STATE_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_train_state(setup: Setup) -> TrainState:
    """Initial state: the seed's init for the student, the method's modules and state from a shape probe.

    One jitted program: run op by op, the initializers and the probe's forward passes compiled one small
    program per operation and shape (~300 for a ResNet and KD, about 10 s on CPU). It runs once, so on CPU it
    is compiled without XLA's backend optimizations: 3.6 s instead of 12 s for wrn40_2 at batch 64, and 0.24 s
    instead of 0.05 s to run. A method that lays its state out over the mesh (CRD's sharded banks) gets it made
    in place, so that no device holds all of it."""
    options = INITIAL_STATE_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    shardings = None
    if setup.method.shards_state:
        shardings = train_state_sharding(setup.mesh, train_state_layout(setup), setup.method)
    return jax.jit(functools.partial(_initial_state, setup), compiler_options=options,
                   out_shardings=shardings)(*_initial_state_inputs(setup))


def train_state_layout(setup: Setup) -> TrainState:
    """The initial state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves): traced, never compiled or run."""
    return jax.eval_shape(functools.partial(_initial_state, setup), *_initial_state_inputs(setup))


def _initial_state_inputs(setup: Setup) -> tuple:
    """`_initial_state`'s array inputs: the run's seed key, the first `batch_size` examples, the teacher."""
    config = setup.config
    return (jax.random.PRNGKey(config.seed), *setup.first_examples(),
            setup.teacher.variables if setup.teacher else None)


def _initial_state(setup: Setup, seed_key, images, labels, index, teacher_variables) -> TrainState:
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
    if setup.method.strong_view:  # shapes only: the probe's strong view is the sample itself
        batch = batch._replace(strong_images=sample, strong_student=student_out, strong_teacher=teacher_out)
    method_init = setup.method.initialize(method_rng, Probe(
        student_out, teacher_out, batch, setup.train_labels, setup.train.num_classes,
        teacher_model=setup.teacher.model if setup.teacher else None, teacher_variables=teacher_variables))
    params = {"student": student_variables["params"], "method": method_init.variables.get("params", {})}
    batch_stats = {"student": student_variables["batch_stats"],
                   "method": method_init.variables.get("batch_stats", {})}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=setup.optimizer.init(params), method_state=method_init.state, rng=step_rng)
