"""FSP: the init stage's loss (RepDistiller's FSP matrices of consecutive maps) and its gradients w.r.t. the
student's stem and stage outputs against PyTorch, on a homogeneous and a heterogeneous pair; a pair of other
channels refused in one line (RepDistiller's N/A), also for exactly the N/A pairs of its table; 3 init steps
against RepDistiller's `init` loop; FSP trains nothing with the student and its training term is 0. Shared code:
tests/helpers/init_stage_methods.py; the config learns in tests/test_methods_learn.py."""

import jax
import numpy as np
import pytest

from jaxkd.errors import UserError
from jaxkd.methods import Probe, get_method
from jaxkd.tools import published
from tests.helpers.assertions import relative
from tests.helpers.init_stage_methods import (PAIRS, REL, assert_builds_for_pairs,
                                              assert_three_init_steps_match_pytorch,
                                              assert_trains_nothing_and_its_training_term_is_zero, random_output,
                                              recipe, torch_of)
from tests.helpers.torch_references import nchw, nhwc
from tests.reference import repdistiller_init_methods as reference


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_fsp_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    t_stages = [(h, w, s[2]) for (h, w, _), s in zip(t_stages, s_stages)]  # FSP: the student's channels
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    method = get_method("fsp", recipe("fsp"))

    def loss_fn(stem, features):
        return method.init_loss({}, student._replace(stem=stem, features=features), teacher, None)[0]

    loss, (grad_stem, grad_features) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(student.stem, student.features)
    maps = [torch_of(x) for x in (student.stem, *student.features)]
    torch_loss = sum(reference.fsp_losses(maps, [nchw(np.asarray(x)) for x in (teacher.stem, *teacher.features)]))
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL) and torch_loss.item() > 1e-3
    for ours, theirs in zip((grad_stem, *grad_features), maps):
        assert relative(ours, nhwc(theirs.grad)) <= REL


def test_fsp_refuses_a_pair_of_other_channels_in_one_line(rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS["heterogeneous"]
    probe = Probe(random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages), None, None, 10)
    with pytest.raises(UserError, match=r"fsp needs .* same channels; got \[8, 8, 16, 32\] and \[8, 8, 24, 48\]"):
        get_method("fsp", recipe("fsp")).init(jax.random.PRNGKey(0), probe)


def test_three_init_steps_match_pytorch():
    assert_three_init_steps_match_pytorch("fsp", 23)


def test_trains_nothing_with_the_student_and_its_training_term_is_zero(rng):
    assert_trains_nothing_and_its_training_term_is_zero("fsp", rng)


def test_builds_only_where_repdistillers_table_has_a_number():
    """FSP refuses (one error line) exactly the N/A pairs of RepDistiller's README: wrn_40_2 -> wrn_40_1 and every
    cross-architecture pair (jax.eval_shape: shapes only)."""
    same, cross = published.REPDISTILLER_PAIRS_SAME, published.REPDISTILLER_PAIRS_DIFFERENT
    fsp_pairs = [pair for pair, top1 in zip(same, published.REPDISTILLER_TABLE_SAME["fsp"], strict=True) if top1]
    assert len(fsp_pairs) == 6 and "fsp" not in published.REPDISTILLER_TABLE_DIFFERENT
    assert_builds_for_pairs("fsp", same + cross, refused=[pair for pair in same + cross if pair not in fsp_pairs])
