"""MLKD's strong view, made on the device: Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/dataset/cifar100.py`
`get_cifar100_train_transform_strong`'s second transform: RandomCrop(32, padding=4) -> RandomHorizontalFlip ->
`RandAugment(2, 10)` (the FixMatch variant in that file: two operations drawn with replacement from
`augment_list()`, each at a value uniform in its range, then `Cutout` of a random size up to half the image) ->
ToTensor -> Normalize (the pipeline's `normalize`).

Each operation follows the PIL function the official one calls, on uint8 HWC RGB images, vmapped over the batch
with per-example draws from the step's key (the official draws come from Python's `random` and numpy on the host):
- AutoContrast (`ImageOps.autocontrast`): each channel stretched to 0..255, (x - lo) * 255 // (hi - lo), less one
  where PIL's float64 table falls just short of that integer;
- Brightness, Color, Contrast, Sharpness (`ImageEnhance`): PIL's blend of a degenerate image and the image,
  `uint8(degenerate + factor * (image - degenerate))` in float32 (the factors lie in [0.05, 0.95], so no clipping);
  the degenerates are black, the ITU-R 601 grey PIL's `convert("L")` computes, the rounded mean of that grey, and
  the 3x3 SMOOTH filter (weights 1, centre 5, / 13, rounded; the border pixels kept);
- Equalize (`ImageOps.equalize`), Posterize, Solarize: PIL's per-channel lookup tables, in integers;
- Rotate, ShearX/Y, TranslateX/Y (`Image.rotate` / `Image.transform(AFFINE)`, nearest neighbour, black fill): the
  source pixel of output pixel (x, y) is the floor of the affine map of its centre (x + 0.5, y + 0.5). PIL steps
  the map incrementally in float64; here it is evaluated directly in float32, so a pixel whose source coordinate
  falls within rounding of an integer can take its neighbour's value (tests/test_strong_augment.py bounds how
  often);
- Cutout: a square of side `v * 32` (v uniform in [0, 0.5)) at a uniform centre, filled with (125, 123, 114), drawn
  as `ImageDraw.rectangle` does (corners truncated to integers, both edges included).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.data import augment

KEY_STREAM = 0x5354  # fold_in(step key, KEY_STREAM): the strong view's key, apart from the step's other keys
NUM_OPS = 2  # RandAugment(2, 10): two operations per image (its m = 10 is unused)
CUTOUT_COLOR = (125, 123, 114)
MAX_CUTOUT = 0.5


def _blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
    """PIL's `Image.blend(degenerate, image, factor)` for 0 <= factor <= 1: truncated, in float32. The product is
    rounded on its own before the sum, as in PIL's C: the select between them (a no-op: 0 where the difference is
    0) keeps XLA from fusing the two into one multiply-add, whose single rounding can land just below an integer
    where PIL's lands on it (126 + 0.6 * (16 - 126): 59.999996, truncated to 59, against PIL's 60)."""
    degenerate = degenerate.astype(jnp.float32)
    difference = image.astype(jnp.float32) - degenerate
    change = jnp.where(difference == 0, 0.0, factor * difference)
    return (degenerate + change).astype(jnp.uint8)


def grey(image: jax.Array) -> jax.Array:
    """PIL's `convert("L")` of an RGB image, (H, W) int32: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    rgb = image.astype(jnp.int32)
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


@functools.cache
def _autocontrast_shortfalls() -> np.ndarray:
    """The sorted keys (low * 256 + high) * 256 + level of the levels where PIL's float64 `int(level * scale +
    offset)` (scale = 255 / (high - low), offset = -low * scale) rounds to one less than the exact
    (level - low) * 255 // (high - low): the exact value is an integer there and float64 lands just below it
    (12,094 of the 2.8 million levels inside a range)."""
    keys = []
    levels = np.arange(256)
    for low in range(255):
        high = np.arange(low + 1, 256)[:, None]
        scale = 255.0 / (high - low)
        pil = (levels * scale + (-low * scale)).astype(np.int64)  # int(): toward zero, all >= 0 in range
        short = (pil < (levels - low) * 255 // (high - low)) & (levels >= low) & (levels <= high)
        rows, cols = np.nonzero(short)
        keys.append((low * 256 + high[rows, 0]) * 256 + levels[cols])
    return np.sort(np.concatenate(keys)).astype(np.int32)


def auto_contrast(image, _=None):
    """`ImageOps.autocontrast`: each channel stretched from its (low, high) to 0..255 as PIL's float64 lookup table
    rounds it: the exact integer quotient, one less where PIL's float64 falls short (`_autocontrast_shortfalls`)."""
    pixels = image.astype(jnp.int32)
    low, high = jnp.min(pixels, axis=(0, 1)), jnp.max(pixels, axis=(0, 1))
    stretched = (pixels - low) * 255 // jnp.maximum(high - low, 1)
    shortfalls = jnp.asarray(_autocontrast_shortfalls())
    keys = (low * 256 + high) * 256 + pixels
    found = shortfalls[jnp.minimum(jnp.searchsorted(shortfalls, keys), shortfalls.size - 1)] == keys
    return jnp.where(high > low, stretched - found, pixels).astype(jnp.uint8)


def brightness(image, factor):
    return _blend(jnp.zeros_like(image), image, factor)


def color(image, factor):
    return _blend(jnp.broadcast_to(grey(image)[..., None], image.shape), image, factor)


def contrast(image, factor):
    levels = grey(image)
    count = levels.size
    mean = (2 * jnp.sum(levels) + count) // (2 * count)  # int(mean + 0.5)
    return _blend(jnp.full(image.shape, mean), image, factor)


def equalize(image, _=None):
    """`ImageOps.equalize`: per channel, lut[i] = (step // 2 + #pixels below i) // step with step = (#pixels -
    #pixels at the highest level present) // 255; unchanged where step is 0."""
    pixels = image.astype(jnp.int32)
    histograms = jnp.sum(jax.nn.one_hot(pixels, 256, dtype=jnp.int32), axis=(0, 1))  # (3, 256)
    highest = jnp.max(pixels, axis=(0, 1))  # (3,)
    total = pixels.shape[0] * pixels.shape[1]
    step = (total - histograms[jnp.arange(3), highest]) // 255
    below = jnp.cumsum(histograms, axis=1) - histograms
    lut = jnp.minimum((step[:, None] // 2 + below) // jnp.maximum(step[:, None], 1), 255)
    equalized = lut[jnp.arange(3), pixels]
    return jnp.where(step > 0, equalized, pixels).astype(jnp.uint8)


def identity(image, _=None):
    return image


def posterize(image, value):
    bits = jnp.maximum(value.astype(jnp.int32), 1)  # int(v), at least 1
    mask = (255 - ((1 << (8 - bits)) - 1)).astype(jnp.uint8)
    return image & mask


def _affine(image, matrix):
    """`Image.transform(size, AFFINE, matrix)`, nearest neighbour, black fill: output (x, y) takes the source pixel
    at the floor of (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5, y' = y + 0.5."""
    a, b, c, d, e, f = matrix
    height, width = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5, jnp.arange(width, dtype=jnp.float32) + 0.5,
                          indexing="ij")
    source_x, source_y = jnp.floor(a * xs + b * ys + c), jnp.floor(d * xs + e * ys + f)
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    rows = jnp.clip(source_y, 0, height - 1).astype(jnp.int32)
    cols = jnp.clip(source_x, 0, width - 1).astype(jnp.int32)
    return jnp.where(inside[..., None], image[rows, cols], jnp.zeros((), image.dtype))


def rotate(image, degrees):
    """`Image.rotate(degrees)`: counter-clockwise about the centre (w / 2, h / 2)."""
    height, width = image.shape[:2]
    angle = -jnp.deg2rad(degrees)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    center_x, center_y = width / 2.0, height / 2.0
    return _affine(image, (cos, sin, center_x - cos * center_x - sin * center_y,
                           -sin, cos, center_y + sin * center_x - cos * center_y))


def sharpness(image, factor):
    """Blend with `ImageFilter.SMOOTH` (3x3, weights 1 and centre 5, / 13, rounded; border pixels unchanged)."""
    pixels = image.astype(jnp.float32)
    padded = jnp.pad(pixels, ((1, 1), (1, 1), (0, 0)))
    height, width = image.shape[:2]
    neighbourhood = sum(padded[i:i + height, j:j + width] for i in range(3) for j in range(3))
    smooth = jnp.floor((neighbourhood + 4 * pixels) / 13 + 0.5)
    border = jnp.zeros((height, width), bool).at[1:-1, 1:-1].set(True)
    degenerate = jnp.where(border[..., None], smooth, pixels)
    return _blend(degenerate, image, factor)


def shear_x(image, value):
    return _affine(image, (1.0, value, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, value):
    return _affine(image, (1.0, 0.0, 0.0, value, 1.0, 0.0))


def solarize(image, threshold):
    return jnp.where(image.astype(jnp.float32) < threshold, image, 255 - image)


def translate_x(image, value):
    return _affine(image, (1.0, 0.0, value * image.shape[1], 0.0, 1.0, 0.0))


def translate_y(image, value):
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, value * image.shape[0]))


# the official `augment_list()`: (operation, low, high), in its order
OPERATIONS = (
    (auto_contrast, 0.0, 1.0), (brightness, 0.05, 0.95), (color, 0.05, 0.95), (contrast, 0.05, 0.95),
    (equalize, 0.0, 1.0), (identity, 0.0, 1.0), (posterize, 4.0, 8.0), (rotate, -30.0, 30.0),
    (sharpness, 0.05, 0.95), (shear_x, -0.3, 0.3), (shear_y, -0.3, 0.3), (solarize, 0.0, 256.0),
    (translate_x, -0.3, 0.3), (translate_y, -0.3, 0.3),
)


def cutout(image, fraction, center_x, center_y):
    """`Cutout(img, fraction)`: side v = fraction * width; x0 = int(max(0, center_x - v / 2)), x1 = min(w, x0 + v)
    (the same in y); pixels x0..int(x1), y0..int(y1) inclusive set to CUTOUT_COLOR; none for fraction 0."""
    height, width = image.shape[:2]
    side = fraction * width
    x0 = jnp.floor(jnp.maximum(0.0, center_x - side / 2.0))
    y0 = jnp.floor(jnp.maximum(0.0, center_y - side / 2.0))
    x1, y1 = jnp.floor(jnp.minimum(width, x0 + side)), jnp.floor(jnp.minimum(height, y0 + side))
    cols, rows = jnp.arange(width), jnp.arange(height)
    box = (((rows >= y0) & (rows <= y1))[:, None] & ((cols >= x0) & (cols <= x1))[None, :]) & (fraction > 0)
    return jnp.where(box[..., None], jnp.asarray(CUTOUT_COLOR, image.dtype), image)


def apply_operation(index, image, uniform):
    """OPERATIONS[index] at the value `low + (high - low) * uniform` (the official draw)."""
    branches = [lambda image, uniform, op=op, low=low, high=high: op(image, low + (high - low) * uniform)
                for op, low, high in OPERATIONS]
    return jax.lax.switch(index, branches, image, uniform)


def rand_augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """The official `RandAugment(2, 10)` on a uint8 NHWC batch: per image two operations (with replacement) at
    uniform values, then Cutout at a fraction uniform in [0, 0.5) and a uniform centre."""
    batch, height, width = images.shape[:3]
    op_key, value_key, cutout_key, center_key = jax.random.split(key, 4)
    operations = jax.random.randint(op_key, (batch, NUM_OPS), 0, len(OPERATIONS))
    values = jax.random.uniform(value_key, (batch, NUM_OPS))
    fractions = MAX_CUTOUT * jax.random.uniform(cutout_key, (batch,))
    centers = jax.random.uniform(center_key, (batch, 2)) * jnp.asarray((width, height), jnp.float32)

    def one(image, operations, values, fraction, center):
        for i in range(NUM_OPS):
            image = apply_operation(operations[i], image, values[i])
        return cutout(image, fraction, center[0], center[1])

    return jax.vmap(one)(images, operations, values, fractions, centers)


def strong_view(key: jax.Array, images: jax.Array, padding: str = "zeros") -> jax.Array:
    """The strong view of a uint8 NHWC batch (uint8): its own random padded crop and flip (`padding` as the
    pipeline's), then `rand_augment`."""
    crop_key, augment_key = jax.random.split(key)
    cropped = augment.crop_flip(images, *augment.sample_crop_flip(crop_key, images.shape[0]), padding)
    return rand_augment(augment_key, cropped)

