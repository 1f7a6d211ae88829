"""The training data pipeline of a recipe, read from `config.data`: padding, normalization, the last batch, and
SaliencyMix (off in both references).

The two references differ in the first three (the transforms are in jaxkd/data/augment.py):
* `padding`: the seed's "reflect" (Pad(4, reflect)), RepDistiller's "zeros" (RandomCrop(32, padding=4)).
* `normalization`: "pytorch_kd", mean (129.30, 124.07, 112.43) / 255 and std (68.17, 65.39, 70.42) / 255 (pytorch-kd
  utils/transforms.py); "repdistiller", (0.5071, 0.4867, 0.4408) and (0.2675, 0.2565, 0.2761) (dataset/cifar100.py).
* `drop_last`: the seed's True (781 steps per epoch at 50,000 / 64); RepDistiller's False (782, the last a batch
  of 16 that BN normalizes with its own statistics, as PyTorch does).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxkd.data import augment
from jaxkd.data.saliencymix import saliencymix
from jaxkd.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataPipeline:
    """How each training batch is made, and how an epoch is cut into batches."""

    padding: str = "reflect"
    normalization: str = "pytorch_kd"
    drop_last: bool = True
    saliencymix: bool = False  # each batch mixed with probability saliencymix_prob (jaxkd/data/saliencymix.py)
    saliencymix_prob: float = 0.5
    saliencymix_per_example: bool = False

    @classmethod
    def from_config(cls, config) -> DataPipeline:
        """`config.data.{padding, normalization, drop_last, saliencymix, saliencymix_prob, saliencymix_per_example}`;
        a padding or normalization that is not one of the references' is one UserError."""
        data = config.data
        if data.padding not in augment.PADDINGS:
            raise UserError(f"data.padding must be one of {', '.join(augment.PADDINGS)}, got {data.padding!r}")
        if data.normalization not in augment.NORMALIZATIONS:
            raise UserError(f"data.normalization must be one of {', '.join(augment.NORMALIZATIONS)}, got "
                            f"{data.normalization!r}")
        return cls(data.padding, data.normalization, bool(data.drop_last),  # a bool: ConfigDict keeps its type
                   bool(data.saliencymix), data.saliencymix_prob, bool(data.saliencymix_per_example))

    def augment(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """uint8 batch -> float32 network input: random padded crop, random flip, normalize."""
        return augment.augment_batch(key, images, self.padding, self.normalization)

    def crop_flip(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """The random padded crop and flip alone (uint8 stays uint8), for SaliencyMix to mix before `normalize`."""
        return augment.crop_flip(images, *augment.sample_crop_flip(key, images.shape[0]), self.padding)

    def mix(self, key: jax.Array, images: jax.Array):
        """SaliencyMix on a cropped and flipped uint8 batch: (images, partners, lam), or the batch unmixed
        (partners None, lam 1) when SaliencyMix is off."""
        if not self.saliencymix:
            return images, None, 1.0
        return saliencymix(key, images, self.saliencymix_prob, per_example=self.saliencymix_per_example)

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 -> float32 with this recipe's constants (training inputs and evaluation alike)."""
        return augment.normalize(images, self.normalization)

    def steps_per_epoch(self, num_examples: int, batch_size: int) -> int:
        """Batches per epoch (781 or 782 at 50,000 / 64)."""
        return augment.steps_per_epoch(num_examples, batch_size, self.drop_last)

    def last_batch_size(self, num_examples: int, batch_size: int) -> int:
        """The size of each epoch's last batch (`batch_size`, or the remainder when it is kept)."""
        return augment.last_batch_size(num_examples, batch_size, self.drop_last)
