"""ImageNet's transforms on PIL images, as torchvision applies them (torchvision 0.28, `transforms.transforms`).

* training: `RandomResizedCrop(size, scale, ratio)` (torchvision's `get_params`: 10 attempts at an area uniform in
  `scale` x the image's and a log-uniform aspect ratio in `ratio`, then the central fallback), then
  `RandomHorizontalFlip(0.5)`;
* evaluation: `Resize(resize)` (the shorter side to `resize`, the longer `int(resize * long / short)`, no
  resampling when the size is already right), then `CenterCrop(crop)` (`int(round(...))` offsets, zero padding
  when the image is smaller);
* both: `ToTensor` + `Normalize(mean, std)` in float32, here as one lookup table per uint8 level and channel, so
  that the values are torchvision's bit for bit also when the step normalizes on the device.

Images are decoded and resampled by Pillow exactly as torchvision does for PIL inputs (`Image.open(...)
.convert("RGB")`, `Image.crop`, `Image.resize` with the chosen filter, which Pillow always antialiases when it
downsamples). The transforms return uint8 HWC arrays: a quarter of float32's bytes between the host and the device;
`ImageTransforms.normalize` turns them into the network's float32 inputs (numpy on the host, jax.numpy in a step).

The random parameters come from a `numpy.random.Generator` the caller derives from (seed, epoch, example index)
(`jaxkd.data.streaming.loader.example_rng`), never from a global state, so that worker scheduling cannot change
them. The draws follow torchvision's distribution (tests/test_data_streaming.py compares the two), not its
random stream (torch's generator).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from jaxkd.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet recipe (references/classification/presets.py)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_ATTEMPTS = 10  # RandomResizedCrop.get_params tries this often before its central fallback
# torchvision's InterpolationMode names -> Pillow's filters (transforms.functional.pil_modes_mapping)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def sample_crop(rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's (top, left, crop height, crop width) for an image of `height` x `width`, drawn from
    `rng` the way torchvision's `get_params` draws them: up to CROP_ATTEMPTS tries of an area fraction uniform in
    `scale` and an aspect ratio (w / h) log-uniform in `ratio`, kept when the rounded crop fits, its corner uniform
    over the positions; else the whole image cut to the nearest ratio in `ratio`, centred."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_low, log_high))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    image_ratio = width / height
    if image_ratio < min(ratio):
        crop_width, crop_height = width, round(width / min(ratio))
    elif image_ratio > max(ratio):
        crop_width, crop_height = round(height * max(ratio)), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def resized_crop(image: Image.Image, top: int, left: int, height: int, width: int, size: tuple[int, int],
                 resample) -> Image.Image:
    """torchvision's `F.resized_crop` on a PIL image: the box, then resized to `size` = (height, width) (no
    resampling when the box already has that size)."""
    image = image.crop((left, top, left + width, top + height))
    return image if image.size == (size[1], size[0]) else image.resize((size[1], size[0]), resample)


def resize_shorter_side(image: Image.Image, size: int, resample) -> Image.Image:
    """torchvision's `Resize(size)` on a PIL image: the shorter side becomes `size`, the longer
    `int(size * long / short)` (truncated), the image untouched when it has that size already."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if new_size == image.size else image.resize(new_size, resample)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's `CenterCrop(size)` on a PIL image, `size` = (height, width): zero-padded first where the image
    is smaller (the extra pixel of an odd difference on the right/bottom), then cut at
    `round((image - crop) / 2)` (Python's round: halves to even)."""
    crop_height, crop_width = size
    width, height = image.size
    if crop_width > width or crop_height > height:
        pad_left = (crop_width - width) // 2 if crop_width > width else 0
        pad_top = (crop_height - height) // 2 if crop_height > height else 0
        padded = Image.new(image.mode, (max(width, crop_width), max(height, crop_height)), 0)
        padded.paste(image, (pad_left, pad_top))
        image, (width, height) = padded, padded.size
        if (width, height) == (crop_width, crop_height):
            return image
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return image.crop((left, top, left + crop_width, top + crop_height))


@dataclasses.dataclass(frozen=True)
class ImageTransforms:
    """The recipe's transforms and their parameters (config-level: sizes, the crop's scale and ratio ranges, the
    flip probability, mean/std, and the interpolation, a key of INTERPOLATIONS)."""

    train_size: int = 224
    eval_resize: int = 256
    eval_crop: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"data.interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                            f"{self.interpolation!r}")
        for name in ("train_size", "eval_resize", "eval_crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"data.{name} must be an integer >= 1, got {value!r}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise UserError(f"data.scale must be 0 < low <= high <= 1 and data.ratio 0 < low <= high, got "
                            f"{self.scale} and {self.ratio}")
        if not 0 <= self.flip_probability <= 1:
            raise UserError(f"data.flip_probability must lie in [0, 1], got {self.flip_probability}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"data.mean and data.std must hold 3 values each, std > 0; got {self.mean}, {self.std}")

    @property
    def resample(self):
        return INTERPOLATIONS[self.interpolation]

    def train(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """RandomResizedCrop(train_size) + RandomHorizontalFlip of an RGB PIL image -> uint8 (S, S, 3)."""
        top, left, height, width = sample_crop(rng, image.height, image.width, self.scale, self.ratio)
        flip = rng.random() < self.flip_probability
        return self.train_with(image, top, left, height, width, flip)

    def train_with(self, image: Image.Image, top: int, left: int, height: int, width: int, flip: bool) -> np.ndarray:
        """The training transform with given crop parameters and flip (what `train` draws)."""
        size = (self.train_size, self.train_size)
        image = resized_crop(image, top, left, height, width, size, self.resample)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(image, dtype=np.uint8)

    def eval(self, image: Image.Image) -> np.ndarray:
        """Resize(eval_resize) + CenterCrop(eval_crop) of an RGB PIL image -> uint8 (C, C, 3)."""
        image = resize_shorter_side(image, self.eval_resize, self.resample)
        return np.asarray(center_crop(image, (self.eval_crop, self.eval_crop)), dtype=np.uint8)

    def normalization_table(self) -> np.ndarray:
        """float32 (256, 3): ToTensor + Normalize of every uint8 level per channel, computed as torch does
        (x.div(255), then .sub(mean).div(std), all float32; mean and std as torch.as_tensor makes them)."""
        levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
        return (levels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def normalize(self, images):
        """uint8 (..., 3) -> float32, torchvision's ToTensor + Normalize values (HWC, not CHW). A numpy array is
        normalized with numpy, a jax array with jax.numpy (by lookup, so that XLA's reciprocal multiplication
        cannot change a bit)."""
        if isinstance(images, np.ndarray):
            return self.normalization_table()[images.astype(np.intp), np.arange(3)]
        import jax.numpy as jnp

        return jnp.asarray(self.normalization_table())[images.astype(jnp.int32), jnp.arange(3)]
