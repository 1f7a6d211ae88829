"""What the method tests feed a method: random feature pairs of a student and a teacher, a logit method's term
and gradient, and a few engine train steps from given weights (compared with a PyTorch loop)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, get_method
from jaxkd.models import ModelOutput, get_model

# (stage output shapes NHWC, pooled size) of a student and a teacher: the same shapes, and a teacher with other
# channels, spatial sizes and stage count
FEATURE_PAIRS = {
    "homogeneous": (([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32), ([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32)),
    "heterogeneous": (([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32),
                      ([(8, 8, 16), (4, 4, 24), (4, 4, 40), (4, 4, 48)], 48)),
}


def random_model_outputs(rng, batch: int, stage_shapes, pooled_size: int, scale=1.0, shift=0.0):
    """A `ModelOutput` of float32 numpy features (normal * scale + shift): stage outputs and the pooled vector."""
    features = [(rng.normal(size=(batch, *shape)) * scale + shift).astype(np.float32) for shape in stage_shapes]
    return ModelOutput(features, (rng.normal(size=(batch, pooled_size)) * scale + shift).astype(np.float32), None)


def logit_term_and_grad(method, student, teacher, batch=None):
    """(term, metrics, gradient w.r.t. the student's logits) of a method whose term reads only the logits, on
    (B, C) logits of student and teacher, in train mode, jitted: what a logit method's parity test compares."""
    batch = Batch(None, None, None, None) if batch is None else batch

    def term(z_s):
        out = method.term({}, {}, ModelOutput([], None, z_s), ModelOutput([], None, jnp.asarray(teacher)), batch,
                          True)
        return out.term, out.metrics

    (value, metrics), grad = jax.jit(jax.value_and_grad(term, has_aux=True))(jnp.asarray(student))
    return value, metrics, grad


def engine_train_steps(config, student_arch: str, teacher_arch: str, num_classes: int, student_variables: dict,
                       teacher_variables: dict, method_variables: dict, images, labels, method_state=None):
    """`jaxkd.engine.step.make_update` (jitted once) for len(images) steps from the given weights (the method's
    {"params", "batch_stats"} and state), one epoch: per-step {loss, ce, term} and the final train state."""
    steps, batch_size = len(images), len(images[0])
    setup = Setup(student=get_model(student_arch, num_classes), method=get_method(config.method, config),
                  teacher=Teacher(get_model(teacher_arch, num_classes), teacher_variables, teacher_arch),
                  optimizer=make_optimizer(config, steps), train=None, test=None, steps_per_epoch=steps,
                  mesh=data_mesh(), config=config)
    params = {"student": student_variables["params"], "method": method_variables.get("params", {})}
    batch_stats = {"student": student_variables["batch_stats"], "method": method_variables.get("batch_stats", {})}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=setup.optimizer.init(params), rng=jax.random.PRNGKey(0),
                       method_state={} if method_state is None else method_state)
    update = jax.jit(make_update(setup))
    history = []
    for step in range(steps):
        batch = Batch(jnp.asarray(images[step]), jnp.asarray(labels[step]), jnp.arange(batch_size, dtype=jnp.int32),
                      jax.random.PRNGKey(step))
        state, metrics = update(state, batch, teacher_variables)
        history.append({name: float(metrics[name]) for name in ("loss", "ce", "term")})
    return history, jax.device_get(state)
