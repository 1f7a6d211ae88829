"""The on-device fine-grained saliency against OpenCV's StaticSaliencyFineGrained, bit for bit.

Images are handed to both exactly as jaxkd holds them (RGB arrays, unchanged): what the official SaliencyMix
code gives OpenCV. New random images every run; the seed is in every failure message.
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.data import saliency


def _opencv(image):
    """OpenCV's float map, and the uint8 map and argmax as the official SaliencyMix code derives them."""
    ok, saliency_map = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(image)
    assert ok
    saliency_u8 = (saliency_map * 255).astype("uint8")
    return saliency_map, saliency_u8, np.unravel_index(np.argmax(saliency_u8, axis=None), saliency_u8.shape)


def _random_images(rng, count, height=32, width=32):
    """count images from each of seven distributions: noise, smooth, blocky, low-contrast, sparse, binary, gray."""
    shape = (count, height, width, 3)

    def upsampled(cells):
        small = rng.integers(0, 256, (count, cells, cells, 3), dtype=np.uint8)
        return np.stack([cv2.resize(s, (width, height), interpolation=cv2.INTER_CUBIC) for s in small])

    sparse = np.broadcast_to(rng.integers(0, 256, (count, 1, 1, 3), dtype=np.uint8), shape).copy()
    spots = rng.random((count, height, width)) < 0.02
    sparse[spots] = rng.integers(0, 256, (int(spots.sum()), 3), dtype=np.uint8)
    gray = np.repeat(rng.integers(0, 256, (count, height, width, 1), dtype=np.uint8), 3, axis=-1)
    return np.concatenate([
        rng.integers(0, 256, shape, dtype=np.uint8),
        upsampled(4),
        np.repeat(np.repeat(rng.integers(0, 256, (count, height // 8, width // 8, 3), dtype=np.uint8), 8, 1), 8, 2),
        rng.integers(100, 108, shape, dtype=np.uint8),
        sparse,
        (rng.random(shape) < 0.5).astype(np.uint8) * 255,
        gray,
    ])


def _structured_images(size=32):
    """Gradients, constants, checkerboards, stripes, blobs, shapes and single pixels (size x size x 3)."""
    r, c = np.mgrid[0:size, 0:size].astype(np.float64)
    ramp = r / (size - 1) * 255
    images = [
        np.stack([ramp, ramp.T, 255 - ramp], -1),  # per-channel gradients in three directions
        np.stack([ramp] * 3, -1), np.stack([ramp.T] * 3, -1), np.stack([(ramp + ramp.T) / 2] * 3, -1),
        np.stack([255 - ramp.T, ramp, ramp], -1),
    ]
    images += [np.full((size, size, 3), value) for value in ((0, 0, 0), (128, 128, 128), (255, 255, 255), (10, 200, 30))]
    images += [np.stack([((r // p + c // p) % 2) * 255] * 3, -1) for p in (1, 2, 4, 8, 16)]  # checkerboards
    images += [np.stack([(r // w % 2) * 200 + 20] * 3, -1) for w in (1, 3, 5)]  # horizontal stripes
    images += [np.stack([(c // w % 2) * 200 + 20] * 3, -1) for w in (1, 4)]  # vertical stripes
    for row, col, sigma in ((15.5, 15.5, 4), (0, 0, 3), (31, 31, 5), (8, 24, 2), (20, 5, 6)):  # Gaussian blobs
        blob = np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2)) * 255
        images += [np.stack([blob, blob * 0.5, 255 - blob], -1)]
    images += [np.stack([255 - 200 * np.exp(-((r - 10) ** 2 + (c - 22) ** 2) / 18)] * 3, -1)]  # dark blob on white
    disk = ((r - 12) ** 2 + (c - 18) ** 2 < 36) * 255.0
    rect = ((r >= 5) & (r < 13) & (c >= 20) & (c < 30)) * 180.0 + 40
    images += [np.stack([disk] * 3, -1), np.stack([rect, rect, rect * 0.5], -1)]
    for row, col in ((0, 0), (31, 31), (15, 16), (0, 31)):  # single bright pixels
        single = np.zeros((size, size, 3))
        single[row, col] = 255
        images += [single]
    images += [np.stack([(r == 7) * 255.0, (c == 25) * 255.0, np.zeros_like(r)], -1)]  # crossing lines
    return np.stack(images).astype(np.uint8)


@jax.jit
def _all_outputs(images):
    """The three public functions in one compile."""
    return saliency.saliency_u8(images), saliency.saliency_map(images), saliency.saliency_argmax(images)


def _assert_matches_opencv(images, seed="fixed"):
    out, floats, argmax = (np.asarray(a) for a in _all_outputs(images))
    bad_u8, bad_float, bad_argmax = [], [], []
    for i, image in enumerate(images):
        ref_float, ref_u8, ref_argmax = _opencv(image)
        if not np.array_equal(out[i], ref_u8):
            bad_u8.append(i)
        if not np.array_equal(floats[i], ref_float):  # exact float32 equality
            bad_float.append(i)
        if tuple(argmax[i]) != tuple(int(v) for v in ref_argmax):
            bad_argmax.append(i)
    assert not (bad_u8 or bad_float or bad_argmax), (
        f"seed {seed}, shape {images.shape}: uint8 map differs on {bad_u8}, float map on {bad_float}, "
        f"argmax on {bad_argmax}"
    )


def test_bit_exact_with_opencv_on_random_and_structured_32x32():
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    images = np.concatenate([_random_images(rng, 32), _structured_images()])  # 224 random + 32 structured
    assert len(images) >= 250
    _assert_matches_opencv(images, seed)


@pytest.mark.parametrize("height, width", [(2, 2), (5, 3), (17, 23), (48, 64)])
def test_bit_exact_with_opencv_on_other_sizes(height, width):
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (6, height, width, 3), dtype=np.uint8)
    images[1] = np.repeat(np.repeat(images[1, :1, :1], height, 0), width, 1)  # constant
    images[2] = np.sort(images[2], axis=0)  # row-sorted: a rough vertical gradient
    _assert_matches_opencv(images, seed)


def test_bit_exact_where_the_float32_box_sums_round():
    # Bright 200x200 and 256x256 images: the integral (< 2**24) is exact, but OpenCV's float32 sum
    # S[y2,x2] + S[y1,x1] exceeds 2**24 and rounds; the map follows OpenCV's order of operations.
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    for size in (200, 256):
        assert size * size <= saliency.MAX_EXACT_PIXELS
        _assert_matches_opencv(rng.integers(200, 256, (2, size, size, 3), dtype=np.uint8), seed)


def test_constant_images_give_an_all_zero_map_and_argmax_at_the_origin():
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 77, 255)])
    out, _, argmax = _all_outputs(images)
    assert not np.asarray(out).any()
    np.testing.assert_array_equal(np.asarray(argmax), np.zeros((3, 2)))


def test_unbatched_and_multi_axis_batches_match_the_flat_batch():
    images = np.random.default_rng().integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    saliency_u8 = jax.jit(saliency.saliency_u8)
    flat = np.asarray(saliency_u8(images.reshape(6, 16, 16, 3)))
    np.testing.assert_array_equal(np.asarray(saliency_u8(images)), flat.reshape(2, 3, 16, 16))
    np.testing.assert_array_equal(np.asarray(saliency_u8(images[1, 2])), flat[5])


def test_center_surround_identity_against_float32_emulation():
    # OpenCV: v = float32(N / D); meanOn = float32(c - v) -> (uint8) if > 0; meanOff = float32(v - c) likewise.
    # Random (c, N, D) over the full range of window sizes, plus quotients one unit around every integer.
    rng = np.random.default_rng()
    divisor = rng.integers(1, 224 * 224, 400_000)
    center = rng.integers(0, 256, divisor.shape)
    surround = (rng.random(divisor.shape) * 255 * divisor).astype(np.int64)
    near = rng.integers(0, 256, divisor.shape) * divisor + rng.integers(-1, 2, divisor.shape)  # k*D - 1, k*D, k*D + 1
    surround = np.clip(np.concatenate([surround, near]), 0, 255 * np.concatenate([divisor, divisor]))
    divisor, center = np.concatenate([divisor, divisor]), np.concatenate([center, center])
    on, off = jax.jit(saliency._on_off)(*(jnp.asarray(a, jnp.int32) for a in (center, surround, divisor)))
    value = surround.astype(np.float32) / divisor.astype(np.float32)  # numpy divides in IEEE float32
    mean_on, mean_off = center.astype(np.float32) - value, value - center.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(on), np.where(mean_on > 0, mean_on.astype(np.int64) % 256, 0))
    np.testing.assert_array_equal(np.asarray(off), np.where(mean_off > 0, mean_off.astype(np.int64) % 256, 0))


def test_mix_scales_identity_on_every_pair():
    # (uint8)(255. * (float)(ON / (float)M)) for every 0 <= ON <= M <= 6 * 255: column m holds 0..m.
    maxima = np.arange(1, 6 * 255 + 1)
    totals = np.minimum(np.arange(6 * 255 + 1)[None, :, None], maxima[None, None, :]).astype(np.int32)
    got = np.asarray(jax.jit(saliency._rescale_to_max)(totals))
    quotient = totals.astype(np.float32) / maxima.astype(np.float32)  # float32 division, then a double product
    np.testing.assert_array_equal(got, np.trunc(255.0 * quotient.astype(np.float64)).astype(np.int64))


def test_rejects_non_uint8_and_tiny_images():
    with pytest.raises(ValueError, match="uint8"):
        saliency.saliency_u8(jnp.zeros((1, 8, 8, 3), jnp.float32))
    with pytest.raises(ValueError, match="2x2"):
        saliency.saliency_u8(jnp.zeros((1, 1, 8, 3), jnp.uint8))
