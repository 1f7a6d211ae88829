"""On-device augmentation and epoch order, checked against numpy re-implementations and the seed's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.data import augment
from jaxkd.data.pipeline import DataPipeline
from jaxkd.errors import UserError


def _numpy_crop_flip(images, offsets, flips):
    """Independent reference: np.pad(mode='reflect') by 4, slice 32x32 at the offsets, mirror the columns."""
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    out = np.stack([padded[i, r:r + 32, c:c + 32] for i, (r, c) in enumerate(offsets)])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def _numpy_normalize(images):
    mean = np.float32([129.3 / 255, 124.07 / 255, 112.43 / 255])
    std = np.float32([68.17 / 255, 65.39 / 255, 70.42 / 255])
    return (images.astype(np.float32) / np.float32(255) - mean) / std


@pytest.fixture
def images():
    return np.random.default_rng().integers(0, 256, (81, 32, 32, 3), dtype=np.uint8)


def test_reflect_padding_matches_numpy_at_every_offset(images):
    # All 81 offset pairs, unflipped: together the crops cover every pixel of the padded image.
    offsets = np.array([(r, c) for r in range(9) for c in range(9)], dtype=np.int32)
    flips = np.zeros(81, dtype=bool)
    out = jax.jit(augment.crop_flip)(images, offsets, flips)
    np.testing.assert_array_equal(np.asarray(out), _numpy_crop_flip(images, offsets, flips))


def test_crop_then_flip_matches_numpy(images):
    rng = np.random.default_rng()
    offsets = rng.integers(0, 9, (81, 2)).astype(np.int32)
    flips = rng.random(81) < 0.5
    out = jax.jit(augment.crop_flip)(images, offsets, flips)
    assert out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), _numpy_crop_flip(images, offsets, flips))


def test_offsets_and_flips_cover_their_full_range():
    offsets, flips = jax.jit(augment.sample_crop_flip, static_argnums=1)(jax.random.key(0), 4096)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert set(offsets[:, 0]) == set(range(9)) and set(offsets[:, 1]) == set(range(9))
    # 4096 fair coin flips: the count of heads is within 6 sigma (sigma = 32) of 2048.
    assert abs(int(flips.sum()) - 2048) < 6 * 32
    # Each offset value has probability 1/9 (about 455 of 4096, sigma about 20).
    counts = np.bincount(offsets.ravel(), minlength=9) / 2
    assert np.all(np.abs(counts - 4096 / 9) < 6 * 20)


def test_augment_is_crop_flip_then_normalize_with_the_drawn_parameters(images):
    key = jax.random.key(7)
    out = jax.jit(augment.augment_batch)(key, images)
    offsets, flips = augment.sample_crop_flip(key, len(images))
    expected = _numpy_normalize(_numpy_crop_flip(images, np.asarray(offsets), np.asarray(flips)))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_augment_is_deterministic_per_key(images):
    first = jax.jit(augment.augment_batch)(jax.random.key(3), images)
    again = jax.jit(augment.augment_batch)(jax.random.key(3), images)
    other = jax.jit(augment.augment_batch)(jax.random.key(4), images)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_normalization_constants_are_the_seed_numbers():
    np.testing.assert_array_equal(augment.MEAN, np.float32([129.3 / 255, 124.07 / 255, 112.43 / 255]))
    np.testing.assert_array_equal(augment.STD, np.float32([68.17 / 255, 65.39 / 255, 70.42 / 255]))
    assert augment.MEAN.dtype == np.float32 and augment.STD.dtype == np.float32


def test_normalize_is_bit_identical_to_numpy_true_division(images):
    out = jax.jit(augment.normalize)(images)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), _numpy_normalize(images))


def test_normalize_is_bit_identical_to_the_seeds_torchvision_transform(images):
    torch = pytest.importorskip("torch")
    # ToTensor: HWC uint8 -> CHW float / 255; Normalize: sub(mean).div(std), mean/std given as Python floats.
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor([129.3 / 255, 124.07 / 255, 112.43 / 255])[:, None, None]
    std = torch.tensor([68.17 / 255, 65.39 / 255, 70.42 / 255])[:, None, None]
    expected = tensor.sub(mean).div(std).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(augment.normalize(images)), expected)


def test_steps_per_epoch_drops_the_last_partial_batch():
    assert augment.steps_per_epoch(50_000, 64) == 781
    assert augment.steps_per_epoch(128, 64) == 2
    assert augment.steps_per_epoch(63, 64) == 0


def test_epoch_permutation_is_deterministic_and_changes_with_the_epoch():
    key = jax.random.key(42)
    perm = jax.jit(augment.epoch_permutation, static_argnums=2)
    first, again, next_epoch = perm(key, 0, 1000), perm(key, 0, 1000), perm(key, 1, 1000)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(next_epoch))
    assert first.dtype == jnp.int32
    np.testing.assert_array_equal(np.sort(np.asarray(first)), np.arange(1000))


def test_kept_steps_cover_every_example_once_except_the_dropped_remainder():
    num_examples, batch_size = 103, 8
    steps = augment.steps_per_epoch(num_examples, batch_size)  # 12 steps, 7 examples dropped
    perm = augment.epoch_permutation(jax.random.key(1), 5, num_examples)
    indices_of_step = jax.jit(augment.batch_indices, static_argnums=2)  # the step is traced
    batches = [np.asarray(indices_of_step(perm, jnp.int32(s), batch_size)) for s in range(steps)]
    seen = np.concatenate(batches)
    assert len(seen) == len(set(seen.tolist())) == steps * batch_size == 96
    dropped = set(range(num_examples)) - set(seen.tolist())
    assert dropped == set(np.asarray(perm)[96:].tolist()) and len(dropped) == 7
    np.testing.assert_array_equal(batches[3], np.asarray(perm)[24:32])


# --------------------------------------------------------------------------------- RepDistiller's pipeline

REPDISTILLER_MEAN, REPDISTILLER_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def _torchvision_repdistiller(images, offsets, flips):
    """RepDistiller's train transform written from torchvision's documented semantics, in torch on each image:
    RandomCrop(32, padding=4): pad the uint8 image with fill 0 (padding_mode "constant") by 4 on every side,
    crop 32x32 at top i, left j; RandomHorizontalFlip: mirror the width; ToTensor: CHW float / 255;
    Normalize(mean, std): (x - mean) / std, mean and std as float32 tensors of the Python floats."""
    import torch

    mean = torch.as_tensor(REPDISTILLER_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(REPDISTILLER_STD, dtype=torch.float32)[:, None, None]
    out = []
    for image, (i, j), flip in zip(images, offsets, flips):
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        padded = torch.nn.functional.pad(chw, (4, 4, 4, 4), mode="constant", value=0)
        crop = padded[:, i:i + 32, j:j + 32]
        if flip:
            crop = crop.flip(-1)
        tensor = crop.contiguous().to(torch.float32).div(255)
        out.append(tensor.sub(mean).div(std).permute(1, 2, 0).numpy())
    return np.stack(out)


def test_repdistiller_constants_are_its_numbers_in_float32():
    mean, std = augment.NORMALIZATIONS["repdistiller"]
    np.testing.assert_array_equal(mean, np.float32(REPDISTILLER_MEAN))
    np.testing.assert_array_equal(std, np.float32(REPDISTILLER_STD))


@pytest.mark.parametrize("flip", [False, True])
def test_repdistiller_pipeline_is_bit_identical_to_torchvisions_transform_at_every_offset(images, flip):
    pytest.importorskip("torch")
    offsets = np.array([(r, c) for r in range(9) for c in range(9)], dtype=np.int32)
    flips = np.full(81, flip)
    pipeline = DataPipeline(padding="zeros", normalization="repdistiller", drop_last=False)
    ours = jax.jit(lambda x, o, f: pipeline.normalize(augment.crop_flip(x, o, f, pipeline.padding)))(
        images, offsets, flips)
    np.testing.assert_array_equal(np.asarray(ours), _torchvision_repdistiller(images, offsets, flips))


def test_repdistiller_augment_uses_the_drawn_offsets_and_flips(images):
    pytest.importorskip("torch")
    key = jax.random.key(11)
    pipeline = DataPipeline(padding="zeros", normalization="repdistiller", drop_last=False)
    out = jax.jit(pipeline.augment)(key, images)
    offsets, flips = augment.sample_crop_flip(key, len(images))
    np.testing.assert_array_equal(np.asarray(out), _torchvision_repdistiller(images, np.asarray(offsets),
                                                                              np.asarray(flips)))


def test_zero_padding_fills_the_border_with_black_and_reflect_does_not():
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    corner = np.array([[0, 0]], np.int32)  # the crop's top-left 4x4 rows/cols come from the padding
    zeros = np.asarray(augment.crop_flip(white, corner, np.zeros(1, bool), "zeros"))
    reflect = np.asarray(augment.crop_flip(white, corner, np.zeros(1, bool), "reflect"))
    assert (zeros[0, :4] == 0).all() and (zeros[0, :, :4] == 0).all() and (zeros[0, 4:, 4:] == 255).all()
    assert (reflect == 255).all()


def test_keeping_the_last_batch_gives_782_steps_the_last_of_16():
    assert augment.steps_per_epoch(50_000, 64, drop_last=False) == 782
    assert augment.last_batch_size(50_000, 64, drop_last=False) == 16
    assert augment.last_batch_size(50_000, 64, drop_last=True) == 64
    assert augment.steps_per_epoch(128, 64, drop_last=False) == 2 and augment.last_batch_size(128, 64, False) == 64
    assert augment.steps_per_epoch(63, 64, drop_last=False) == 1 and augment.last_batch_size(63, 64, False) == 63


def test_kept_last_batch_covers_every_example_once():
    num_examples, batch_size = 103, 8
    steps = augment.steps_per_epoch(num_examples, batch_size, drop_last=False)  # 13: 12 of 8, then 7
    last = augment.last_batch_size(num_examples, batch_size, drop_last=False)
    perm = augment.epoch_permutation(jax.random.key(1), 5, num_examples)
    indices_of_step = jax.jit(augment.batch_indices, static_argnums=(2, 3))
    batches = [np.asarray(indices_of_step(perm, jnp.int32(s), batch_size, batch_size)) for s in range(steps - 1)]
    batches.append(np.asarray(indices_of_step(perm, jnp.int32(steps - 1), batch_size, last)))
    assert (steps, last, len(batches[-1])) == (13, 7, 7)
    np.testing.assert_array_equal(np.concatenate(batches), np.asarray(perm))


@pytest.mark.parametrize("key, value, message", [
    ("padding", "edge", "data.padding must be one of reflect, zeros, got 'edge'"),
    ("normalization", "cifar10", "data.normalization must be one of pytorch_kd, repdistiller, imagenet, got 'cifar10'"),
])
def test_pipeline_settings_outside_the_references_are_refused(key, value, message):
    from configs import default

    config = default.get_config()
    config.data[key] = value
    with pytest.raises(UserError, match=message):
        DataPipeline.from_config(config)
