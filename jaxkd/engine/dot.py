"""DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023; megvii-research/mdistiller
`mdistiller/engine/dot.py`): SGD with one momentum buffer for the task gradient (gamma * CE) and one for the
distillation gradient (alpha * KD + beta * term), at momentum - delta and momentum + delta (docs/methods.md, "DOT").
`optimizer.dot` turns it on for any method; the step takes the two gradients apart (`dot_gradients`: one forward
pass, its pullback applied twice) and the optimizer (`dot_optimizer`) updates from both."""

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.extend import core as jax_core

from jaxkd.errors import UserError


def uses_dot(config) -> bool:
    """Whether the run trains with DOT (`optimizer.dot`; configs written before the key existed: no)."""
    return bool(config.optimizer.get("dot", False))


# Which of the two losses reaches a parameter (mdistiller decides it per tensor by whether `loss.backward()` left a
# gradient, `p.grad is not None`): the task loss and the distillation loss, only one of them, or neither.
BOTH, TASK, DISTILL, NEITHER = "both", "task", "distill", "neither"


@flax.struct.dataclass
class DotGradients:
    """What the DOT optimizer updates from, in place of one gradient: the gradient of the task loss (gamma * CE)
    and of the distillation loss (alpha * KD + beta * method term), and for each leaf of the parameters (in
    `jax.tree.leaves` order) which of the two reaches it (BOTH, TASK, DISTILL, NEITHER; static)."""

    task: Any
    distill: Any
    sides: tuple = flax.struct.field(pytree_node=False)


class DotState(NamedTuple):
    """The DOT optimizer's state: steps taken, the task-gradient and the distillation-gradient momentum buffers
    (zeros where a side does not reach the leaf)."""

    count: jax.Array  # int32 scalar
    task_momentum: optax.Params
    distill_momentum: optax.Params


def check_dot_settings(momentum: float, delta: float, nesterov: bool) -> None:
    """DOT's momenta, momentum - dot_delta (task) and momentum + dot_delta (distillation), must both be in [0, 1);
    nesterov is not DOT's (mdistiller's `DistillationOrientedTrainer` has none)."""
    task, distill = momentum - delta, momentum + delta
    if not 0 <= task or not distill < 1:
        raise UserError(f"optimizer.dot_delta {delta} with momentum {momentum}: DOT's task momentum ({task:g}) and "
                        f"distillation momentum ({distill:g}) must both be in [0, 1)")
    if nesterov:
        raise UserError("optimizer.nesterov cannot be combined with optimizer.dot (DOT's momentum is plain SGD's)")


def dot_optimizer(schedule, momentum: float, delta: float, weight_decay: float) -> optax.GradientTransformation:
    """DOT (Zhao et al. 2023), megvii-research/mdistiller `mdistiller/engine/dot.py` (`dot`, with the momenta of
    `trainer.py` `DOT.init_optimizer`): SGD with one momentum buffer for the task gradient (momentum - delta) and
    one for the distillation gradient (momentum + delta); `update` takes a `DotGradients`. Per leaf, by which
    losses reach it:
    * both: task buffer = (m - delta) * buf + (g_task + wd * p); distillation buffer = (m + delta) * buf + g_distill
      (no weight decay: the task side has it);
    * task only: buffer = m' * buf + (g_task + wd * p), m' = ((m - delta) + (m + delta)) / 2;
    * distillation only: buffer = m' * buf + (g_distill + wd * p);
    * neither: no update (no weight decay either).
    On the first step each buffer is its gradient as given, as PyTorch's SGD's, so the distillation-only leaves
    have no weight decay on that step (mdistiller clones the raw gradient before adding it). p -= lr * (task
    buffer + distillation buffer)."""
    task_momentum, distill_momentum = momentum - delta, momentum + delta
    mean_momentum = (distill_momentum + task_momentum) / 2.0  # as mdistiller computes it

    def init(params):
        return DotState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                        jax.tree.map(jnp.zeros_like, params))

    def update(grads: DotGradients, state: DotState, params=None):
        if params is None:
            raise ValueError("the DOT optimizer needs the parameters (weight decay)")
        leaves, treedef = jax.tree.flatten(params)
        task_grads, distill_grads = treedef.flatten_up_to(grads.task), treedef.flatten_up_to(grads.distill)
        task_buffers = treedef.flatten_up_to(state.task_momentum)
        distill_buffers = treedef.flatten_up_to(state.distill_momentum)
        lr, first = schedule(state.count), state.count == 0
        updates, new_task, new_distill = [], [], []
        for p, g_task, g_distill, task_buffer, distill_buffer, side in zip(
                leaves, task_grads, distill_grads, task_buffers, distill_buffers, grads.sides, strict=True):
            update = jnp.zeros_like(p)
            if side in (BOTH, TASK):
                decayed = g_task + weight_decay * p
                rate = task_momentum if side == BOTH else mean_momentum
                task_buffer = jnp.where(first, decayed, rate * task_buffer + decayed)
                update = update - lr * task_buffer
            if side in (BOTH, DISTILL):
                if side == BOTH:
                    later = distill_momentum * distill_buffer + g_distill
                else:
                    later = mean_momentum * distill_buffer + (g_distill + weight_decay * p)
                distill_buffer = jnp.where(first, g_distill, later)
                update = update - lr * distill_buffer
            updates.append(update)
            new_task.append(task_buffer)
            new_distill.append(distill_buffer)
        return (treedef.unflatten(updates), DotState(optax.safe_int32_increment(state.count),
                                                     treedef.unflatten(new_task), treedef.unflatten(new_distill)))

    return optax.GradientTransformation(init, update)


def dot_gradients(weighted_losses, params, weights):
    """(DotGradients, loss, aux) for the DOT optimizer: `weighted_losses(params)` -> ((task, kd, term), aux) run
    once; the task loss's and the distillation loss's (kd + term) gradients from its pullback, applied to (1, 0)
    and (0, 1); and which of the two reaches each leaf (`gradient_sides`), found when the step is traced.
    `weights` = (gamma, alpha, beta): a part weighted 0 is left out of its loss (not added as 0 * part), as the
    reference distillers compute no such part, so that it reaches no parameter."""

    def parts(params):
        weighted, aux = weighted_losses(params)
        task, kd, term = (part if weight else jnp.zeros((), jnp.float32) for part, weight in zip(weighted, weights))
        return (task, kd + term), aux

    (task, distill), pullback, aux = jax.vjp(parts, params, has_aux=True)
    one, zero = jnp.ones_like(task), jnp.zeros_like(task)
    (task_grads,), (distill_grads,) = pullback((one, zero)), pullback((zero, one))
    grads = DotGradients(task_grads, distill_grads, gradient_sides(lambda p: parts(p)[0], params))
    return grads, task + distill, aux


def gradient_sides(parts, params) -> tuple[str, ...]:
    """For each leaf of `params` (`jax.tree.leaves` order): which of the two losses `parts(params)` = (task,
    distill) reaches it: BOTH, TASK, DISTILL or NEITHER, as PyTorch's autograd graph decides whether
    `loss.backward()` leaves a tensor a gradient (mdistiller's DOT reads `p.grad is not None`). Found on the
    traced JVP (`jax.make_jaxpr`, nothing runs): a parameter's tangent reaches a loss's tangent unless
    `stop_gradient`, an integer path or no path at all separates them. An operation with nested programs (a
    `jit`, a scan) counts as reaching all of its outputs from all of its inputs."""
    count = len(jax.tree.leaves(params))
    jaxpr = jax.make_jaxpr(lambda p, t: jax.jvp(parts, (p,), (t,))[1])(params, params).jaxpr
    tangents = jaxpr.invars[count:]
    task, distill = (_inputs_reaching(jaxpr, output) for output in jaxpr.outvars)
    return tuple({(True, True): BOTH, (True, False): TASK, (False, True): DISTILL, (False, False): NEITHER}[
        (tangent in task, tangent in distill)] for tangent in tangents)


def _inputs_reaching(jaxpr, output) -> set:
    """The variables of `jaxpr` that `output` depends on (a backward walk over its equations)."""
    needed = {output} if isinstance(output, jax_core.Var) else set()
    for equation in reversed(jaxpr.eqns):
        if any(var in needed for var in equation.outvars):
            needed.update(var for var in equation.invars if isinstance(var, jax_core.Var))
    return needed
