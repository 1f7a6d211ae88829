"""OpenCV's fine-grained static saliency (Montabone & Soto), bit-exact on uint8 images, as jittable functions.

SaliencyMix centres its box on the argmax of `cv2.saliency.StaticSaliencyFineGrained`; this module computes the
same uint8 map as OpenCV's uint8 path (opencv_contrib `modules/saliency/src/staticSaliencyFineGrained.cpp`),
batched, on device, with static shapes, and every division in integers, so that XLA's reciprocal multiplications
cannot move a value by one ulp. The steps, the channel order and why each integer identity is exact:
docs/methods.md, "The saliency map, bit for bit".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBORHOODS = (12, 24, 48, 28, 56, 112)  # 3*4, 3*4*2, 3*4*2*2, 7*4, 7*4*2, 7*4*2*2, in OpenCV's order
MAX_EXACT_PIXELS = (2**24 - 1) // 255  # 65793: up to here OpenCV's float32 integral image is exact


def _floor_divide(numerator: jax.Array, denominator: jax.Array | np.ndarray) -> jax.Array:
    """floor(numerator / denominator) for int32 |numerator| < 2**24, 1 <= denominator < 2**24, quotient < 2**20.

    Several times faster than XLA's integer floor division on CPU: the float32 quotient of the exact operands
    (a few ulp off at most, whether XLA divides or multiplies by a reciprocal) is within 1/4 of the true one,
    so its floor is off by at most one, which two integer comparisons correct.
    """
    quotient = jnp.floor(numerator.astype(jnp.float32) / jnp.asarray(denominator, jnp.float32)).astype(jnp.int32)
    quotient = quotient - (quotient * denominator > numerator).astype(jnp.int32)
    return quotient + ((quotient + 1) * denominator <= numerator).astype(jnp.int32)


def _gray(images: jax.Array) -> jax.Array:
    """cvtColor(BGR2GRAY) on uint8: 15-bit fixed point, channel 0 weighted 0.114 (int32, channels dropped)."""
    c = images.astype(jnp.int32)
    return (3735 * c[..., 0] + 19235 * c[..., 1] + 9798 * c[..., 2] + (1 << 14)) >> 15


def _gaussian_blur_3x3(gray: jax.Array) -> jax.Array:
    """GaussianBlur(3x3, sigma 0) on uint8 (H, W, B): kernel (1,2,1)/4 per axis, rounded once, reflect-101."""
    padded = jnp.pad(gray, ((1, 1), (1, 1), (0, 0)), mode="reflect")  # numpy's reflect = OpenCV's REFLECT_101
    rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]
    full = rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]
    return (full + 8) >> 4


def _windows(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per scale and position, OpenCV's clamped window [lo, hi) in integral-image coordinates ((6, size) each)."""
    n = np.array(NEIGHBORHOODS)[:, None]
    position = np.arange(size)[None, :]
    return np.clip(position - n + 1, 0, size), np.clip(position + n + 1, 0, size)


def _scaled_on_off(blurred: jax.Array) -> tuple[jax.Array, jax.Array]:
    """getIntensityScaled for all six scales: the (uint8) on and off maps as int32 (6, H, W, B)."""
    height, width, _ = blurred.shape
    top, bottom = _windows(height)
    left, right = _windows(width)
    integral = jnp.pad(jnp.cumsum(jnp.cumsum(blurred, axis=0), axis=1), ((1, 0), (1, 0), (0, 0)))
    integral = integral.astype(jnp.float32)  # CV_32F: exact while 255*H*W < 2**24

    def corner(rows, cols):
        return integral[rows[:, :, None], cols[:, None, :]]  # (6, H, W, B): contiguous batch rows, fast gathers

    # OpenCV's float32 sum, in its order; XLA does not reassociate float additions.
    box = ((corner(bottom, right) + corner(top, left)) - corner(bottom, left)) - corner(top, right)
    surround = (box - blurred.astype(jnp.float32)).astype(jnp.int32)  # N = box - c: an integer-valued float
    divisor = ((right - left)[:, None, :] * (bottom - top)[:, :, None] - 1).astype(np.int32)[..., None]  # D
    return _on_off(blurred, surround, divisor)


def _on_off(center: jax.Array, surround: jax.Array, divisor: jax.Array | np.ndarray) -> tuple[jax.Array, jax.Array]:
    """OpenCV's v = float32(N / D); meanOn = float32(c - v), on = meanOn > 0 ? (uint8) meanOn : 0, off likewise
    with v - c; for int32 c in 0..255, |N| < 2**24 with |N / D| < 256, 1 <= D < 2**16.

    Float32 rounding moves c - N/D by at most 2**-17 (quotient < 256) + 2**-17 (difference < 256) = 2**-16
    < 1/D, while c - N/D is either an integer (then every step is exact) or at least 1/D away from one: the
    truncation never sees the rounding. So on = max(c - ceil(N/D), 0), off = max(floor(N/D) - c, 0), and
    % 256 is the C cast's wrap (never reached on uint8 input).
    """
    floor = _floor_divide(surround, divisor)
    ceil = floor + (floor * divisor != surround).astype(jnp.int32)
    return jnp.maximum(center - ceil, 0) % 256, jnp.maximum(floor - center, 0) % 256


def _rescale_to_max(total: jax.Array) -> jax.Array:
    """mixScales' (uint8)(255. * (float)(ON / (float)max ON)) per image, in integers (int32 (H, W, B)).

    The double product is exact and 255 * float32(ON/M) is within 255 * 2**-24 < 1/M of 255*ON/M, so only an
    integer k = 255*ON/M could be truncated to k - 1, if float32(k/255) < k/255: no k in 0..255 has that
    (tests check all pairs ON <= M <= 6*255). So this is floor(255*ON / M). M = 0 (a flat image): OpenCV's
    0/0 = NaN casts to 0, as does 0 / 1 here.
    """
    return _floor_divide(255 * total, jnp.maximum(jnp.max(total, axis=(0, 1)), 1))


def saliency_u8(images: jax.Array) -> jax.Array:
    """OpenCV's fine-grained saliency map as uint8 0..255, bit-exact with computeSaliency on uint8 images.

    images: uint8 (..., H, W, 3) in the channel order OpenCV would be given (jaxkd's RGB, unchanged, as the
    official SaliencyMix code does), H, W >= 2. Returns uint8 (..., H, W): OpenCV's internal map; its float
    map is ``out * float32(1/255)``, and ``(map * 255).astype(uint8)`` gives ``out`` back.
    """
    if images.dtype != jnp.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"saliency_u8 expects uint8 (..., H, W, 3) images, got {images.dtype} {images.shape}")
    *batch_shape, height, width, _ = images.shape
    if height < 2 or width < 2:
        raise ValueError(f"saliency_u8 needs images of at least 2x2 pixels, got {height}x{width}")
    # Batch last inside: the window gathers then copy contiguous batch rows (on CPU 10x faster than batch first).
    gray = jnp.moveaxis(_gray(images.reshape(-1, height, width, 3)), 0, -1)  # (H, W, B)
    blurred = _gaussian_blur_3x3(_gaussian_blur_3x3(gray))
    on, off = _scaled_on_off(blurred)
    on_mixed = _rescale_to_max(jnp.sum(on, axis=0))  # uint16 sums of at most 6 * 255: no wrap
    off_mixed = _rescale_to_max(jnp.sum(off, axis=0))
    # mixOnOff: (uint8)(255. * (float)(on + off) / (float)M) in double; exact as an integer floor, since a
    # double quotient of small integers never crosses an integer it does not equal. M = 0 gives 0 (NaN -> 0).
    maximum = jnp.maximum(jnp.max(on_mixed, axis=(0, 1)), jnp.max(off_mixed, axis=(0, 1)))
    out = _floor_divide(255 * (on_mixed + off_mixed), jnp.maximum(maximum, 1)) % 256
    return jnp.moveaxis(out.astype(jnp.uint8), -1, 0).reshape(*batch_shape, height, width)


def saliency_map(images: jax.Array) -> jax.Array:
    """The float32 map computeSaliency returns: saliency_u8(images) * float32(1/255), values in [0, 1]."""
    return saliency_u8(images).astype(jnp.float32) * np.float32(1 / 255)


def saliency_argmax(images: jax.Array) -> jax.Array:
    """(row, col) of each image's most salient pixel, int32 (..., 2): the first maximum in row-major order,
    as the official SaliencyMix code's ``np.unravel_index(np.argmax(map_u8), map_u8.shape)``."""
    saliency = saliency_u8(images)
    width = saliency.shape[-1]
    flat = jnp.argmax(saliency.reshape(*saliency.shape[:-2], -1), axis=-1).astype(jnp.int32)
    return jnp.stack([flat // width, flat % width], axis=-1)
