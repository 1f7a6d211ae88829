"""Logit parity of every architecture: PyTorch reference (seed layout) vs jaxkd on the converted weights."""

import jax
import numpy as np
import pytest
import torch

import convert
from jaxkd.models import ARCHITECTURES, get_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model

REL = 1e-5  # max|diff| <= 1e-5 * max|ref|, fp32 on both sides
# Train mode normalizes with the statistics of 6 images, which amplifies float32 rounding with depth: resnet56's
# last stage differs by 8e-6 of its scale at the median of 40 random models, 1.1e-5 at the worst (2-core AMD
# EPYC); a BN mistake (biased vs unbiased variance, another eps) is 1e-3 or more.
REL_TRAIN = 3e-5


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_eval_and_train_forward_match_pytorch(arch, rng):
    torch_model = randomized_torch_model(arch, seed=int(rng.integers(1 << 30)))
    variables = convert.torch_to_flax(torch_model.state_dict())
    model = get_model(arch)
    images = rng.standard_normal((6, 32, 32, 3), dtype=np.float32)

    # Eval mode: running statistics.
    torch_model.eval()
    with torch.no_grad():
        ref_features, ref_pooled, ref_logits = torch_model.forward_with_pooled(nchw(images))
    out = model.apply(variables, images, train=False, method=model.forward)
    assert_close_scaled(out.logits, ref_logits.numpy(), REL, f"{arch} eval logits")
    assert_close_scaled(out.pooled, ref_pooled.numpy(), REL, f"{arch} eval pooled")
    for i, (feature, ref) in enumerate(zip(out.features, ref_features)):
        assert_close_scaled(feature, nhwc(ref), REL, f"{arch} eval feature {i}")

    # Train mode: batch statistics, and one update of the running statistics.
    torch_model.train()
    with torch.no_grad():
        ref_features, ref_logits = torch_model(nchw(images))
    (features, logits), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert_close_scaled(logits, ref_logits.numpy(), REL_TRAIN, f"{arch} train logits")
    for i, (feature, ref) in enumerate(zip(features, ref_features)):
        assert_close_scaled(feature, nhwc(ref), REL_TRAIN, f"{arch} train feature {i}")
    updated = convert.torch_to_flax(torch_model.state_dict())["batch_stats"]
    for (path, ours), (_, theirs) in zip(jax.tree_util.tree_leaves_with_path(updates["batch_stats"]),
                                         jax.tree_util.tree_leaves_with_path(updated)):
        assert_close_scaled(ours, theirs, REL, f"{arch} running stat {jax.tree_util.keystr(path)}")
