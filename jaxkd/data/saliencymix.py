"""SaliencyMix (Uddin et al., ICLR 2021) as afm-shahab-uddin/SaliencyMix does it, in pure jittable functions.

Official algorithm (`SaliencyMix_CIFAR/saliencymix.py`), per batch: with probability `prob` (r ~ U[0,1), mix iff
r < prob), draw lam ~ Beta(beta, beta) and a permutation `partners` of the batch; take the saliency argmax
(row, col) of the SOURCE image x[partners[0]]; cut a box of cut_rows = int(H * sqrt(1 - lam)) rows and
cut_cols = int(W * sqrt(1 - lam)) columns (the official code's "W" is the row count) with corners
clip(row -/+ cut_rows // 2, 0, H), clip(col -/+ cut_cols // 2, 0, W); paste x[partners] into that box of every
example; recompute lam = 1 - box area / (H * W), the fraction of the original image kept. The loss is
lam * CE(y) + (1 - lam) * CE(y[partners]) (`mixed_cross_entropy`).

Where it runs: on the uint8 batch after crop/flip and before normalize. The official code mixes the normalized
batch; normalization is per pixel, so mixing before or after it gives the same network input, and the
saliency is computed on real uint8 pixels (jaxkd's decision: see `jaxkd.data.saliency`).

Static shapes: the box becomes a mask (no data-dependent slicing), and "no mix" is a select, so mixed and
unmixed batches run the same compiled code. Unmixed: images unchanged, identity partners, lam = 1.
Deviation: lam and the cut are float32 (the official code uses float64); only draws within ~1e-6 of a cut
boundary can differ, which changes nothing about the distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxkd.data.saliency import saliency_argmax
from jaxkd.engine.losses import cross_entropy


def sample_saliencymix(
    key: jax.Array, batch_size: int, prob: float = 0.5, beta: float = 1.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The random draws of one batch: mix (bool ()), lam before clipping (float32 ()), partners (int32 (B,))."""
    if not beta > 0:
        raise ValueError(f"SaliencyMix needs beta > 0 (the official code never mixes otherwise), got {beta}")
    mix_key, lam_key, partner_key = jax.random.split(key, 3)
    mix = jax.random.uniform(mix_key) < prob
    lam = jax.random.beta(lam_key, beta, beta, dtype=jnp.float32)
    partners = jax.random.permutation(partner_key, batch_size).astype(jnp.int32)
    return mix, lam, partners


def saliency_boxes(centers: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """The official `saliency_bbox` from a saliency argmax: centers int (..., 2) = (row, col), lam the drawn
    value. Returns int32 (..., 4) = (top, bottom, left, right), rows [top, bottom) and columns [left, right)."""
    cut_ratio = jnp.sqrt(1.0 - lam)
    half_rows = jnp.floor(height * cut_ratio).astype(jnp.int32) // 2  # official: cut_w = int(W * cut_rat)
    half_cols = jnp.floor(width * cut_ratio).astype(jnp.int32) // 2
    row, col = centers[..., 0], centers[..., 1]
    return jnp.stack([
        jnp.clip(row - half_rows, 0, height), jnp.clip(row + half_rows, 0, height),
        jnp.clip(col - half_cols, 0, width), jnp.clip(col + half_cols, 0, width),
    ], axis=-1)


def box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """bool (..., H, W): True inside each box (top <= row < bottom, left <= col < right)."""
    rows, cols = jnp.arange(height), jnp.arange(width)
    in_rows = (rows >= boxes[..., 0:1]) & (rows < boxes[..., 1:2])
    in_cols = (cols >= boxes[..., 2:3]) & (cols < boxes[..., 3:4])
    return in_rows[..., :, None] & in_cols[..., None, :]


def saliencymix(
    key: jax.Array, images: jax.Array, prob: float = 0.5, beta: float = 1.0, per_example: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SaliencyMix on a uint8 NHWC batch (after crop/flip, before normalize): (mixed, partners, lam).

    per_example=False (official): one box, from the saliency argmax of images[partners[0]], shared by the
    batch; lam float32 (). per_example=True: example i's box is centred on the argmax of its own source
    images[partners[i]] (same cut size); lam float32 (B,). Not mixing (probability 1 - prob): the images,
    arange(B) and lam 1. prob, beta and per_example are static; everything else is traced (one compile).
    """
    batch_size, height, width, _ = images.shape
    mix, drawn_lam, partners = sample_saliencymix(key, batch_size, prob, beta)
    if per_example:
        centers = saliency_argmax(images)[partners]  # (B, 2): the argmax of each example's source
    else:
        centers = saliency_argmax(images[partners[0]])  # (2,): the source pasted into example 0
    boxes = saliency_boxes(centers, drawn_lam, height, width)
    mask = box_mask(boxes, height, width)[..., None]  # (H, W, 1) or (B, H, W, 1)
    mixed = jnp.where(mask, images[partners], images)
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
    lam = 1.0 - area.astype(jnp.float32) / (height * width)  # the kept fraction, after clipping
    identity = jnp.arange(batch_size, dtype=jnp.int32)
    return jnp.where(mix, mixed, images), jnp.where(mix, partners, identity), jnp.where(mix, lam, 1.0)


def mixed_cross_entropy(logits: jax.Array, labels: jax.Array, partners: jax.Array, lam: jax.Array) -> jax.Array:
    """The official SaliencyMix loss lam * CE(logits, labels) + (1 - lam) * CE(logits, labels[partners]).

    lam (): the batch means are mixed, as the official code does; with lam = 1 this is exactly CE(labels).
    lam (B,) (per-example boxes): the batch mean of each example's lam_i * CE_i + (1 - lam_i) * CE_i(partner).
    """
    lam = jnp.asarray(lam, jnp.float32)
    if lam.ndim == 0:
        return lam * cross_entropy(logits, labels) + (1.0 - lam) * cross_entropy(logits, labels[partners])
    logits = logits.astype(jnp.float32)
    own = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    partner = optax.softmax_cross_entropy_with_integer_labels(logits, labels[partners])
    return jnp.mean(lam * own + (1.0 - lam) * partner)
