"""RKD: the term and its gradients w.r.t. the student's pooled vector against RepDistiller's distance and angle
losses (tests/reference/repdistiller_more_losses.py), on a homogeneous and a heterogeneous pair; the weights of
the two logged losses; the recipe. Shared code: tests/helpers/repdistiller_feature_methods.py; the config learns
in tests/test_methods_learn.py."""

import jax
import pytest

from configs import repdistiller
from jaxkd.methods import get_method
from tests.helpers.method_inputs import FEATURE_PAIRS, random_model_outputs
from tests.helpers.repdistiller_feature_methods import BATCH, as_jax, assert_term_and_gradients_match_pytorch


@pytest.mark.parametrize("pair", sorted(FEATURE_PAIRS))
def test_term_and_gradients_match_pytorch(pair, rng):
    assert_term_and_gradients_match_pytorch("rkd", pair, rng)


def test_rkd_weights_and_metrics(rng):
    """`rkd.distance_weight` and `rkd.angle_weight` (RepDistiller's w_d 25, w_a 50) weigh the two logged losses."""
    student, teacher = (as_jax(random_model_outputs(rng, BATCH, [], 16)) for _ in range(2))
    config = repdistiller.get_config("wrn_40_2,wrn_16_2,rkd")
    assert (config.rkd.distance_weight, config.rkd.angle_weight) == (25.0, 50.0)
    config.rkd.angle_weight = 0.0
    out = jax.jit(lambda s, t: get_method("rkd", config).term({}, {}, s, t, None, True))(student, teacher)
    assert float(out.term) == pytest.approx(25.0 * float(out.metrics["distance"]), rel=1e-6)
    assert float(out.metrics["angle"]) > 0


def test_recipe_is_run_cifar_distill_sh():
    config = repdistiller.get_config("resnet32x4,resnet8x4,rkd")
    assert config.method == "rkd"
    assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == (1.0, 0.0, 1.0)
