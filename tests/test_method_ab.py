"""AB: the init stage's loss (RepDistiller's `ab_loss` through its `Connector`) and its gradients w.r.t. the
student's pre-activation maps and the connectors against PyTorch, on a homogeneous and a heterogeneous pair; 3
init steps against RepDistiller's `init` loop; AB trains nothing with the student and its training term is 0;
it builds for every pair of RepDistiller's table. Shared code: tests/helpers/init_stage_methods.py; the config
learns in tests/test_methods_learn.py, the init stage's resume is tests/test_init_stage.py's."""

import jax
import numpy as np
import pytest
import torch

from jaxkd.methods import get_method
from jaxkd.tools import published
from tests.helpers.assertions import relative
from tests.helpers.init_stage_methods import (BATCH, PAIRS, REL, assert_builds_for_pairs,
                                              assert_three_init_steps_match_pytorch,
                                              assert_trains_nothing_and_its_training_term_is_zero, assert_tree_close,
                                              connector_variables, random_output, randomize_batchnorms_seeded, recipe,
                                              torch_of)
from tests.helpers.torch_references import nchw, nhwc
from tests.reference import repdistiller_init_methods as reference

# --- each loss and its gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ab_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    torch.manual_seed(1)
    connector = reference.Connector([(BATCH, s[2], s[0], s[1]) for s in s_stages],
                                    [(BATCH, t[2], t[0], t[1]) for t in t_stages])
    randomize_batchnorms_seeded(connector, 2)
    connector.train()
    method = get_method("ab", recipe("ab"))
    modules = connector_variables(connector)
    assert (len(modules["params"]) == 0) == (pair == "homogeneous")  # identity connectors where shapes agree

    def loss_fn(params, preacts):
        return method.init_loss({"params": params, "batch_stats": modules["batch_stats"]},
                                student._replace(preact_features=preacts), teacher, None)

    (loss, stats), (grad_params, grad_maps) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
        modules["params"], student.preact_features)
    maps = [torch_of(x) for x in student.preact_features]
    torch_loss = sum(reference.ab_losses(connector(maps), [nchw(np.asarray(t)) for t in teacher.preact_features]))
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL) and torch_loss.item() > 1e-3
    for ours, theirs in zip(grad_maps, maps):
        assert relative(ours, nhwc(theirs.grad)) <= REL
    assert_tree_close(grad_params, connector_variables(connector, value=lambda p: p.grad)["params"], "grad",
                      per_tree=True)
    assert_tree_close(stats, connector_variables(connector)["batch_stats"], "running statistics")


def test_three_init_steps_match_pytorch():
    assert_three_init_steps_match_pytorch("ab", 21)


def test_trains_nothing_with_the_student_and_its_training_term_is_zero(rng):
    assert_trains_nothing_and_its_training_term_is_zero("ab", rng)


def test_builds_for_every_pair_of_repdistillers_table():
    """The 13 pairs of RepDistiller's README (jax.eval_shape: shapes only)."""
    assert_builds_for_pairs("ab", published.REPDISTILLER_PAIRS_SAME + published.REPDISTILLER_PAIRS_DIFFERENT)
