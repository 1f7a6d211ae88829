"""A run's streaming data from its config: the training and validation sources, the transforms, the loader
settings, and the training iterator and evaluation batches of this process (jaxkd.engine's host-fed data path).

`config.data.source = "imagefolder"` reads `config.data.data_dir/{train,val}/<class>/<image>`, and
`"tfds_images"` the splits "train" and "validation" of the TFDS image-classification dataset
`config.data.tfds_name` (e.g. imagenet2012, prepared in ArrayRecord in `data_dir` or TFDS's default); the images are
cropped to `data.image_size` for training (RandomResizedCrop + flip) and to `data.eval_resize` then
`data.eval_crop` for evaluation, decoded in `data.workers` worker processes (0: threads of this process), and
normalized in the step with the constants of `data.normalization` ("imagenet": torchvision's). Every mistake in
the data (a missing folder, an empty class folder, a file that is not an image) is one UserError when
`from_config` opens the sources, before anything compiles."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxkd.data.sources import STREAMING_SOURCES
from jaxkd.data.streaming.loader import TrainIterator, make_eval_batches, make_train_iterator
from jaxkd.data.streaming.sources import ImageFolderSource, TfdsImageSource
from jaxkd.data.streaming.transforms import ImageTransforms
from jaxkd.errors import UserError

TRAIN_SPLIT, EVAL_SPLIT = "train", "val"  # torchvision's ImageNet folder names
TFDS_TRAIN_SPLIT, TFDS_EVAL_SPLIT = "train", "validation"  # TFDS imagenet2012's


def is_streaming(config) -> bool:
    """Whether the run's data comes through the streaming loader rather than as arrays held on the device."""
    return config.data.source in STREAMING_SOURCES


@dataclasses.dataclass
class StreamingData:
    """The streaming sources of a run and how its loader reads them."""

    train: ImageFolderSource | TfdsImageSource
    test: ImageFolderSource | TfdsImageSource
    transforms: ImageTransforms
    workers: int

    @classmethod
    def from_config(cls, config) -> StreamingData:
        """Opens (and checks) `config.data.data_dir`'s train and val splits; one UserError for a setting the
        streaming path does not serve or for bad data."""
        data = config.data
        if data.source == "tfds_images" and not data.tfds_name:
            raise UserError("data.source 'tfds_images' reads a TFDS image-classification dataset: name it with "
                            "--config.data.tfds_name (e.g. imagenet2012)")
        if data.source == "imagefolder" and not data.data_dir:
            raise UserError(f"data.source {data.source!r} reads an image folder: set --config.data.data_dir to the "
                            f"folder that holds {TRAIN_SPLIT}/<class>/<image> and {EVAL_SPLIT}/<class>/<image>")
        if data.saliencymix:
            raise UserError(f"data.saliencymix works on the device-resident data only, not on data.source "
                            f"{data.source!r}")
        if not data.drop_last:
            raise UserError(f"data.source {data.source!r} trains on full batches only: set data.drop_last=True")
        transforms = ImageTransforms(train_size=data.image_size, eval_resize=data.eval_resize,
                                     eval_crop=data.eval_crop)
        if data.source == "tfds_images":
            train = TfdsImageSource(data.tfds_name, TFDS_TRAIN_SPLIT, data.data_dir or None)
            test = TfdsImageSource(data.tfds_name, TFDS_EVAL_SPLIT, data.data_dir or None)
        else:
            train = ImageFolderSource(data.data_dir, TRAIN_SPLIT)
            test = ImageFolderSource(data.data_dir, EVAL_SPLIT, classes_from=TRAIN_SPLIT)
        return cls(train, test, transforms, int(data.workers))

    def train_iterator(self, config, process_index: int, process_count: int, start_step: int) -> TrainIterator:
        """This process's training batches from global step `start_step` to the run's end."""
        return make_train_iterator(self.train, self.transforms, config.seed, config.batch_size, process_index,
                                   process_count, start_step, num_epochs=config.epochs, drop_last=True,
                                   workers=self.workers)

    def eval_batches(self, batch_size: int, process_index: int, process_count: int):
        """This process's validation batches of `batch_size` (global), the last padded and masked."""
        return make_eval_batches(self.test, self.transforms, batch_size, process_index, process_count,
                                 workers=self.workers)

    def first_examples(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 images, labels, indices) of the first `count` training examples with the evaluation transform
        at the training size: the shape probe of the initial state (no random draw, no worker started)."""
        probe = dataclasses.replace(self.transforms, eval_resize=self.transforms.train_size,
                                    eval_crop=self.transforms.train_size)
        indices = np.arange(min(count, len(self.train)))
        images = np.stack([probe.eval(self.train.image(int(k))) for k in indices])
        labels = np.asarray([self.train.label(int(k)) for k in indices], np.int32)
        return images, labels, indices.astype(np.int32)

    @property
    def labels(self):
        """Every training label (a method's per-class tables, CRD's): the folder's list, or for TFDS read when first
        turned into an array (`np.asarray`), since that reads every record once."""
        return self.train.labels if isinstance(self.train, ImageFolderSource) else _TfdsLabels(self.train)


class _TfdsLabels:
    """The labels of a TFDS source, read (every record once) only when a method asks for them as an array."""

    def __init__(self, source: TfdsImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __array__(self, dtype=None, copy=None):
        labels = np.asarray([self.source.label(k) for k in range(len(self.source))], np.int32)
        return labels if dtype is None else labels.astype(dtype)
