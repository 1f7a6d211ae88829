"""Data: sources (uint8 NHWC arrays on the host), on-device augmentation, and CIFAR-100-C.

`sources.load_split` gives a dataset split; the arrays are placed on the device once, and the jitted step
gathers each batch with `augment.batch_indices` and transforms it with `augment.augment_batch`, in the
recipe's `pipeline.DataPipeline` (padding, normalization, last partial batch; from `config.data`).
Evaluation uses `augment.normalize`. `cifar100c.open_cifar100c` reads the corrupted test sets. See docs/data.md.
"""

from jaxkd.data.augment import augment_batch, batch_indices, epoch_permutation, normalize, steps_per_epoch
from jaxkd.data.cifar100c import CORRUPTIONS, open_cifar100c
from jaxkd.data.sources import SOURCES, Split, load_split

__all__ = [
    "CORRUPTIONS", "SOURCES", "Split", "augment_batch", "batch_indices", "epoch_permutation", "load_split",
    "normalize", "open_cifar100c", "steps_per_epoch",
]
