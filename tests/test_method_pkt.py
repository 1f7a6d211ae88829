"""PKT: the term and its gradients w.r.t. the student's pooled vector against RepDistiller's PKT loss
(tests/reference/repdistiller_more_losses.py), on a homogeneous and a heterogeneous pair; the recipe. Shared
code: tests/helpers/repdistiller_feature_methods.py; the config learns in tests/test_methods_learn.py."""

import pytest

from configs import repdistiller
from tests.helpers.method_inputs import FEATURE_PAIRS
from tests.helpers.repdistiller_feature_methods import assert_term_and_gradients_match_pytorch


@pytest.mark.parametrize("pair", sorted(FEATURE_PAIRS))
def test_term_and_gradients_match_pytorch(pair, rng):
    assert_term_and_gradients_match_pytorch("pkt", pair, rng)


def test_recipe_is_run_cifar_distill_sh():
    config = repdistiller.get_config("resnet32x4,resnet8x4,pkt")
    assert config.method == "pkt"
    assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == (1.0, 0.0, 30000.0)
