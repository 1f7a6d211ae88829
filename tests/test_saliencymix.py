"""SaliencyMix against a numpy port of the official code (OpenCV saliency, numpy slicing), and its properties."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxkd.data import augment, saliencymix
from jaxkd.engine.losses import cross_entropy

BATCH = 8
_saliencymix = jax.jit(saliencymix.saliencymix, static_argnames=("prob", "beta", "per_example"))
_sample = jax.jit(saliencymix.sample_saliencymix, static_argnames=("batch_size", "prob", "beta"))


def _official_saliency_bbox(img, lam):
    """SaliencyMix_CIFAR/saliencymix.py `saliency_bbox` on a CHW array, line for line, except np.int -> int and
    the cut ratio in float32, as jaxkd computes it (the official float64 differs only within ~1e-6 of a cut
    boundary)."""
    size = img.shape
    W = size[1]
    H = size[2]
    cut_rat = np.sqrt(np.float32(1.0) - np.float32(lam))
    cut_w = int(np.float32(W) * cut_rat)
    cut_h = int(np.float32(H) * cut_rat)

    temp_img = img.transpose(1, 2, 0)
    saliency = cv2.saliency.StaticSaliencyFineGrained_create()
    (success, saliencyMap) = saliency.computeSaliency(temp_img)
    saliencyMap = (saliencyMap * 255).astype("uint8")

    maximum_indices = np.unravel_index(np.argmax(saliencyMap, axis=None), saliencyMap.shape)
    x = maximum_indices[0]
    y = maximum_indices[1]

    bbx1 = np.clip(x - cut_w // 2, 0, W)
    bby1 = np.clip(y - cut_h // 2, 0, H)
    bbx2 = np.clip(x + cut_w // 2, 0, W)
    bby2 = np.clip(y + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def _official_mix(images, mix, lam, perm, per_example=False):
    """The official training-loop step on an NHWC batch (rows = the official bbx, columns = bby).
    Returns the mixed batch, the partners, lam, and the boxes (B, 4) = (bbx1, bbx2, bby1, bby2)."""
    height, width = images.shape[1:3]
    if not mix:
        return images, np.arange(len(images)), np.float32(1.0), None
    sources = perm if per_example else [perm[0]] * len(images)
    boxes = np.array([_official_saliency_bbox(images[s].transpose(2, 0, 1), lam) for s in sources])
    boxes = boxes[:, [0, 2, 1, 3]]
    mixed = images.copy()
    for i, (bbx1, bbx2, bby1, bby2) in enumerate(boxes):
        mixed[i, bbx1:bbx2, bby1:bby2] = images[perm[i], bbx1:bbx2, bby1:bby2]
    lams = 1 - ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / (width * height))
    return mixed, perm, (lams if per_example else lams[0]), boxes


def _images(rng, height=32, width=32):
    """Noise, smooth noise, and bright blobs near the corners (whose boxes get clipped)."""
    r, c = np.mgrid[0:height, 0:width]
    blobs = []
    for row, col in ((1, 2), (height - 2, width - 3), (height // 2, width - 1), (0, width // 3)):
        blob = np.exp(-((r - row) ** 2 + (c - col) ** 2) / 8.0) * 255
        blobs.append(np.stack([blob, blob, blob], -1))
    smooth = np.stack([
        cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(2)
    ])
    noise = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    return np.concatenate([noise, smooth, np.stack(blobs).astype(np.uint8)])


def _check_paste(images, mixed, perm, boxes, lam):
    """The box holds the partner's pixels, everything outside it is the original, lam is the kept fraction."""
    height, width = images.shape[1:3]
    for i, (top, bottom, left, right) in enumerate(boxes):
        inside = np.zeros((height, width), bool)
        inside[top:bottom, left:right] = True
        np.testing.assert_array_equal(mixed[i][inside], images[perm[i]][inside])
        np.testing.assert_array_equal(mixed[i][~inside], images[i][~inside])
        np.testing.assert_allclose(np.atleast_1d(lam)[i % np.size(lam)], 1 - inside.mean(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("per_example", [False, True])
def test_matches_the_official_algorithm_without_recompiling(per_example):
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    images = _images(rng, 24, 40)  # not square: rows and columns cannot be confused
    base = jax.random.key(seed % 2**32)
    # A fresh function object, so that _cache_size counts this test's compiles only.
    function = jax.jit(lambda key, images: saliencymix.saliencymix(key, images, per_example=per_example))
    draws = 40
    mixes = clipped = 0
    for step in range(draws):
        key = jax.random.fold_in(base, step)
        mixed, partners, lam = (np.asarray(a) for a in function(key, images))
        mix, drawn_lam, perm = (np.asarray(a) for a in _sample(key, BATCH))
        ref_mixed, ref_partners, ref_lam, boxes = _official_mix(images, bool(mix), drawn_lam, perm, per_example)
        context = f"seed {seed}, step {step}, mix {mix}, lam {drawn_lam}, boxes {boxes}"
        np.testing.assert_array_equal(mixed, ref_mixed, err_msg=context)
        np.testing.assert_array_equal(partners, ref_partners, err_msg=context)
        assert lam.shape == ((BATCH,) if per_example else ()), context
        np.testing.assert_allclose(lam, ref_lam, rtol=0, atol=1e-6, err_msg=context)
        if mix:
            mixes += 1
            _check_paste(images, mixed, perm, boxes, lam)
            clipped += int(np.any(boxes == 0) or np.any(boxes[:, 1] == 24) or np.any(boxes[:, 3] == 40))
        else:
            assert mixed.dtype == np.uint8 and np.all(lam == 1)
    assert 0 < mixes < draws, f"seed {seed}: {mixes} of {draws} draws mixed"  # both branches ran (p ~ 1e-12)
    assert clipped > 0, f"seed {seed}: no box was clipped at the border"
    # One compile serves mixed and unmixed draws: the branch is a traced select.
    assert function._cache_size() == 1


def test_unmixed_draws_return_the_batch_identity_and_lam_one():
    images = _images(np.random.default_rng())
    for per_example in (False, True):
        mixed, partners, lam = _saliencymix(jax.random.key(0), images, prob=0.0, per_example=per_example)
        np.testing.assert_array_equal(np.asarray(mixed), images)
        np.testing.assert_array_equal(np.asarray(partners), np.arange(BATCH))
        assert np.all(np.asarray(lam) == 1.0)


def test_mixing_probability_and_lam_distribution():
    draws = 20_000
    keys = jax.random.split(jax.random.key(np.random.SeedSequence().entropy % 2**32), draws)

    @jax.jit
    @jax.vmap
    def draw(key):
        never, always = (saliencymix.sample_saliencymix(key, BATCH, prob=p)[0] for p in (0.0, 1.0))
        return saliencymix.sample_saliencymix(key, BATCH), never, always

    (mix, lam, partners), never, always = jax.tree.map(np.asarray, draw(keys))
    # Binomial(20000, 0.5): sigma = 70.7; 6 sigma bounds.
    assert abs(int(mix.sum()) - draws // 2) < 6 * 71
    # lam ~ Beta(1, 1) = U(0, 1): the count below each quartile is Binomial(20000, q) (sigma <= 71).
    for q in (0.25, 0.5, 0.75):
        assert abs(int((lam < q).sum()) - q * draws) < 6 * 71
    assert np.all((lam > 0) & (lam < 1))
    assert all(sorted(p) == list(range(BATCH)) for p in partners[:100])  # permutations
    assert not never.any() and always.all()  # prob 0 and prob 1


def test_mixing_commutes_with_normalize():
    # jaxkd mixes uint8 images before normalize; the official code mixes the normalized batch. Same input.
    images = _images(np.random.default_rng())
    key = jax.random.key(3)
    while not bool(_sample(key, BATCH)[0]):
        key = jax.random.split(key)[0]
    mixed, partners, _ = _saliencymix(key, images)
    normalize = jax.jit(augment.normalize)
    normalized = np.asarray(normalize(images))
    changed = np.any(np.asarray(mixed) != images, axis=-1, keepdims=True)
    assert changed.any()
    official = np.where(changed, normalized[np.asarray(partners)], normalized)
    np.testing.assert_array_equal(np.asarray(normalize(mixed)), official)


def test_mixed_cross_entropy_against_pytorch():
    rng = np.random.default_rng()
    logits = rng.normal(size=(BATCH, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, BATCH)
    partners = rng.permutation(BATCH)
    loss = jax.jit(saliencymix.mixed_cross_entropy)
    # Official: criterion(pred, labels_a) * lam + criterion(pred, labels_b) * (1. - lam).
    lam = 0.3125
    out, y = torch.from_numpy(logits), torch.from_numpy(labels)
    reference = torch.nn.functional.cross_entropy(out, y) * lam + torch.nn.functional.cross_entropy(
        out, y[torch.from_numpy(partners)]) * (1.0 - lam)
    np.testing.assert_allclose(float(loss(logits, labels, partners, jnp.float32(lam))), float(reference), rtol=1e-6)
    # Not mixing (lam 1, identity): exactly the plain cross-entropy (op by op, so both run the same kernels).
    plain = saliencymix.mixed_cross_entropy(logits, labels, np.arange(BATCH), jnp.float32(1.0))
    assert float(plain) == float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
    # Per-example lam: the batch mean of each example's mixture.
    lams = rng.random(BATCH).astype(np.float32)
    per_example = torch.nn.functional.cross_entropy(out, y, reduction="none")
    per_partner = torch.nn.functional.cross_entropy(out, y[torch.from_numpy(partners)], reduction="none")
    expected = torch.mean(torch.from_numpy(lams) * per_example + (1 - torch.from_numpy(lams)) * per_partner)
    np.testing.assert_allclose(float(loss(logits, labels, partners, lams)), float(expected), rtol=1e-6)


def test_rejects_beta_zero():
    with pytest.raises(ValueError, match="beta > 0"):
        saliencymix.sample_saliencymix(jax.random.key(0), BATCH, beta=0.0)
