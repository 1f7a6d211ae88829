"""jaxkd/methods/pooling.py, which AT, NST, VID, CAT-KD, ReviewKD, SDD and OFD pool with: adaptive average
pooling against PyTorch's F.adaptive_avg_pool2d, for sizes that divide and sizes that do not."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F

from jaxkd.methods.pooling import adaptive_avg_pool2d
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.torch_references import nchw, nhwc

REL = 1e-5


@pytest.mark.parametrize("in_hw, out_hw", [((10, 10), (4, 4)), ((7, 9), (3, 5)), ((32, 32), (8, 8)),
                                           ((5, 5), (5, 5)), ((16, 16), (1, 1))])
def test_adaptive_avg_pool2d_matches_torch(in_hw, out_hw, rng):
    x = rng.normal(size=(2, *in_hw, 3)).astype(np.float32)
    assert_close_scaled(adaptive_avg_pool2d(jnp.asarray(x), *out_hw), nhwc(F.adaptive_avg_pool2d(nchw(x), out_hw)),
                        REL, "adaptive_avg_pool2d")
