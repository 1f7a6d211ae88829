"""On-device training augmentation and epoch ordering, the seed's recipe, as pure jittable functions.

Seed (pytorch-kd utils/transforms.py): Pad(4, reflect) -> RandomHorizontalFlip -> RandomCrop(32) -> ToTensor ->
Normalize(mean (129.30, 124.07, 112.43)/255, std (68.17, 65.39, 70.42)/255); batch 64 with drop_last.

Here the crop comes first and the flip second. With offsets uniform over 0..8 the two orders give the same
distribution (flipping then cropping at offset o equals cropping at 8 - o then flipping), and crop-then-flip
lets one gather do both without building the padded image. Reflect padding is numpy's ``mode="reflect"``
(PyTorch's reflect, OpenCV's REFLECT_101): the edge pixel is not repeated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD = 4
NUM_OFFSETS = 2 * PAD + 1  # crop offsets 0..8 in each axis
# Computed in float64 like the seed's Python floats, then held in float32 as torch.Normalize does.
MEAN = (np.array((129.3, 124.07, 112.43)) / 255).astype(np.float32)
STD = (np.array((68.17, 65.39, 70.42)) / 255).astype(np.float32)


# Every normalized value, per uint8 level and channel, computed as torchvision does (true float32 division).
# XLA turns division by a constant into multiplication by its reciprocal, which is off by one ulp for most
# values; looking the result up keeps the network inputs bit-identical to the seed's.
_NORMALIZED = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - MEAN) / STD  # (256, 3)


def normalize(images: jax.Array) -> jax.Array:
    """uint8 NHWC (C = 3) -> float32 (x / 255 - MEAN) / STD, bit-identical to torchvision's ToTensor + Normalize.

    The evaluation-time transform, and the last step of `augment_batch`.
    """
    return jnp.asarray(_NORMALIZED)[images.astype(jnp.int32), jnp.arange(3)]


def sample_crop_flip(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Draws per-example crop offsets (int32 (B, 2) = (row, col), each uniform in 0..8) and flips (bool (B,), p 0.5)."""
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (batch_size, 2), 0, NUM_OFFSETS, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
    return offsets, flips


def _reflect(positions: jax.Array, size: int) -> jax.Array:
    """Maps positions in [-PAD, size - 1 + PAD] to the source pixel under reflect padding (edge not repeated)."""
    positions = jnp.abs(positions)
    return jnp.where(positions > size - 1, 2 * (size - 1) - positions, positions)


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array) -> jax.Array:
    """Crops each image out of its reflect-padded (by PAD) version at `offsets`, then mirrors it where `flips`.

    images: (B, H, W, C) any dtype; offsets: int (B, 2), top-left (row, col) in padded coordinates, 0..2*PAD;
    flips: bool (B,). Returns (B, H, W, C), the same dtype. One gather: no padded copy, no per-example loop,
    static shapes.
    """
    _, height, width, _ = images.shape
    rows = _reflect(jnp.arange(height)[None, :] + offsets[:, :1] - PAD, height)  # (B, H)
    cols = _reflect(jnp.arange(width)[None, :] + offsets[:, 1:] - PAD, width)  # (B, W)
    cols = jnp.where(flips[:, None], cols[:, ::-1], cols)
    batch = jnp.arange(images.shape[0])[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def augment_batch(key: jax.Array, images: jax.Array) -> jax.Array:
    """The training transform of a uint8 batch: random reflect-pad crop, random flip, normalize -> float32."""
    offsets, flips = sample_crop_flip(key, images.shape[0])
    return normalize(crop_flip(images, offsets, flips))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder is dropped like the seed's drop_last (781 at 50,000 / 64)."""
    return num_examples // batch_size


def epoch_permutation(key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The example order of `epoch` (int32 (N,)): a permutation from fold_in(key, epoch), so any epoch can be
    recomputed on its own (resuming mid-run sees the same order). `key`, e.g. jax.random.key(seed)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def batch_indices(permutation: jax.Array, step: int | jax.Array, batch_size: int) -> jax.Array:
    """Indices of batch `step` of an epoch: permutation[step * batch_size : (step + 1) * batch_size].

    Static shape, so `step` may be traced. `step` must be below steps_per_epoch (dynamic_slice clamps, it does
    not fail, past the end).
    """
    return jax.lax.dynamic_slice_in_dim(permutation, step * batch_size, batch_size)
