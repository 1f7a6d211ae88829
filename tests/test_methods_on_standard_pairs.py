"""The methods that read more of the models than their logits and stage outputs, on each of RepDistiller's 13
CIFAR-100 pairs with their recipe for the pair: SDD and CAT-KD (the last feature map and the classifier) and OFD
(the pre-ReLU stage outputs and the teacher's BNs). For each pair the method's modules and state are built from
the pair's outputs and its term and gradient are traced (`jax.eval_shape`: shapes only, nothing compiled), as
the engine's initial state and step would; a pair a method cannot serve would be one `UserError` line (none of
the 13 is). The values against the official code are each method's own test file's; the logit-only methods
(NKD, WTTM, CTKD, DKD, DIST) read only the logits, the same for every pair."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mdistiller
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.base import float32_outputs
from jaxkd.models import get_model
from jaxkd.tools.published import REPDISTILLER_PAIRS_DIFFERENT, REPDISTILLER_PAIRS_SAME

CLASSES, BATCH = 100, 2
RECIPES = ("sdd_kd", "catkd", "ofd")  # configs/mdistiller.py entries: methods sdd, catkd, ofd


@functools.cache
def model_shapes(arch: str):
    """(model, the shapes of its variables, of its float32 outputs on a CIFAR batch) for `arch`."""
    model = get_model(arch, CLASSES)
    images = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
    outputs = jax.eval_shape(lambda v, x: float32_outputs(model.apply(v, x, train=False, method=model.forward)),
                             variables, images)
    return model, variables, outputs


@pytest.mark.parametrize("teacher_arch,student_arch", REPDISTILLER_PAIRS_SAME + REPDISTILLER_PAIRS_DIFFERENT)
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_method_builds_and_its_term_traces_on_the_pair(recipe, teacher_arch, student_arch):
    config = mdistiller.get_config(f"{teacher_arch},{student_arch},{recipe}")
    method = get_method(config.method, config)
    teacher_model, teacher_variables, teacher_out = model_shapes(teacher_arch)
    _, _, student_out = model_shapes(student_arch)
    labels = jnp.zeros((BATCH,), jnp.int32)
    batch = Batch(jnp.zeros((BATCH, 32, 32, 3)), labels, labels, jax.random.PRNGKey(1))

    def initialize(student, teacher, variables):
        probe = Probe(student, teacher, batch, np.arange(10) % CLASSES, CLASSES, teacher_model, variables)
        return method.initialize(jax.random.PRNGKey(2), probe)

    method_init = jax.eval_shape(initialize, student_out, teacher_out, teacher_variables)

    def term(student, variables, state, teacher):
        return method.term(variables, state, student, teacher, batch, True).term

    # the term and its gradient w.r.t. the student's outputs and the method's modules, as the step takes it
    value, _ = jax.eval_shape(jax.value_and_grad(term, argnums=(0, 1)), student_out, method_init.variables,
                              method_init.state, teacher_out)
    assert value.shape == () and value.dtype == jnp.float32
    if config.method == "ofd":  # a margin per channel of each aligned teacher stage, a connector onto it
        margins = method_init.state["margins"]
        assert [m.shape[0] for m in margins] == [t.shape[-1] for t in teacher_out.preact_features[-len(margins):]]
