"""On-device training augmentation and epoch ordering, both references' recipes, as pure jittable functions.

Seed (pytorch-kd utils/transforms.py): Pad(4, reflect) -> RandomHorizontalFlip -> RandomCrop(32) -> ToTensor ->
Normalize(mean (129.30, 124.07, 112.43)/255, std (68.17, 65.39, 70.42)/255); batch 64 with drop_last.
RepDistiller (dataset/cifar100.py): RandomCrop(32, padding=4) (zero padding) -> RandomHorizontalFlip ->
ToTensor -> Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)); batch 64, the last partial batch
kept. `padding` ("reflect" | "zeros"), `normalization` ("pytorch_kd" | "repdistiller") and `drop_last` select them
(`jaxkd.data.pipeline` reads them from the config).

Here the crop comes first and the flip second, as in RepDistiller. With offsets uniform over 0..8 the two
orders give the same distribution (flipping then cropping at offset o equals cropping at 8 - o then
flipping), and crop-then-flip lets one gather do both without building the padded image. Reflect padding is
numpy's ``mode="reflect"`` (PyTorch's reflect, OpenCV's REFLECT_101): the edge pixel is not repeated; zero
padding is pixel value 0 before normalization, as torchvision pads the uint8 image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD = 4
NUM_OFFSETS = 2 * PAD + 1  # crop offsets 0..8 in each axis
PADDINGS = ("reflect", "zeros")
# (mean, std) per recipe, held in float32 as torch.Normalize does (torch.as_tensor of the Python floats); the
# seed's are computed in float64 from its Python floats first.
NORMALIZATIONS = {
    "pytorch_kd": ((np.array((129.3, 124.07, 112.43)) / 255).astype(np.float32),
             (np.array((68.17, 65.39, 70.42)) / 255).astype(np.float32)),
    "repdistiller": (np.array((0.5071, 0.4867, 0.4408), np.float32), np.array((0.2675, 0.2565, 0.2761), np.float32)),
    # torchvision's ImageNet recipe (references/classification/presets.py), for the streaming path's images
    "imagenet": (np.array((0.485, 0.456, 0.406), np.float32), np.array((0.229, 0.224, 0.225), np.float32)),
}
MEAN, STD = NORMALIZATIONS["pytorch_kd"]


# Every normalized value, per uint8 level and channel, computed as torchvision does (true float32 division).
# XLA turns division by a constant into multiplication by its reciprocal, which is off by one ulp for most
# values; looking the result up keeps the network inputs bit-identical to the references'.
_NORMALIZED = {name: (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - mean) / std  # (256, 3)
               for name, (mean, std) in NORMALIZATIONS.items()}


def normalize(images: jax.Array, normalization: str = "pytorch_kd") -> jax.Array:
    """uint8 NHWC (C = 3) -> float32 (x / 255 - mean) / std with the constants of `normalization` (a key of
    NORMALIZATIONS), bit-identical to torchvision's ToTensor + Normalize.

    The evaluation-time transform, and the last step of `augment_batch`.
    """
    return jnp.asarray(_NORMALIZED[normalization])[images.astype(jnp.int32), jnp.arange(3)]


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


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: str = "reflect") -> jax.Array:
    """Crops each image out of its padded (by PAD, `padding` one of PADDINGS) version at `offsets`, then mirrors
    it where `flips`.

    images: (B, H, W, C) any dtype; offsets: int (B, 2), top-left (row, col) in padded coordinates, 0..2*PAD;
    flips: bool (B,). Returns (B, H, W, C), the same dtype. One gather: no padded copy, no per-example loop,
    static shapes.
    """
    _, height, width, _ = images.shape
    rows = jnp.arange(height)[None, :] + offsets[:, :1] - PAD  # (B, H) positions in the unpadded image
    cols = jnp.arange(width)[None, :] + offsets[:, 1:] - PAD  # (B, W)
    cols = jnp.where(flips[:, None], cols[:, ::-1], cols)
    batch = jnp.arange(images.shape[0])[:, None, None]
    if padding == "reflect":
        return images[batch, _reflect(rows, height)[:, :, None], _reflect(cols, width)[:, None, :]]
    if padding != "zeros":
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    pixels = images[batch, jnp.clip(rows, 0, height - 1)[:, :, None], jnp.clip(cols, 0, width - 1)[:, None, :]]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    return jnp.where(inside[..., None], pixels, jnp.zeros((), images.dtype))


def augment_batch(key: jax.Array, images: jax.Array, padding: str = "reflect",
                  normalization: str = "pytorch_kd") -> jax.Array:
    """The training transform of a uint8 batch: random padded crop, random flip, normalize -> float32."""
    offsets, flips = sample_crop_flip(key, images.shape[0])
    return normalize(crop_flip(images, offsets, flips, padding), normalization)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches per epoch: with `drop_last` the full ones, the remainder dropped like the seed's DataLoader (781
    at 50,000 / 64); without it the last partial batch counts too, as in RepDistiller's (782, the last of 16)."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def last_batch_size(num_examples: int, batch_size: int, drop_last: bool = True) -> int:
    """The size of an epoch's last batch: `batch_size`, or without `drop_last` the remainder when there is one
    (16 at 50,000 / 64)."""
    remainder = num_examples % batch_size
    return batch_size if drop_last or remainder == 0 else remainder


def epoch_permutation(key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The example order of `epoch` (int32 (N,)): a permutation from fold_in(key, epoch), so any epoch can be
    recomputed on its own (resuming mid-run sees the same order). `key`, e.g. jax.random.key(seed)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def batch_indices(permutation: jax.Array, step: int | jax.Array, batch_size: int,
                  size: int | None = None) -> jax.Array:
    """Indices of batch `step` of an epoch: permutation[step * batch_size : step * batch_size + size], `size`
    being `batch_size` or, for a last partial batch, its `last_batch_size`.

    Static shape, so `step` may be traced. The slice must lie inside the permutation (dynamic_slice clamps, it
    does not fail, past the end).
    """
    return jax.lax.dynamic_slice_in_dim(permutation, step * batch_size, batch_size if size is None else size)
