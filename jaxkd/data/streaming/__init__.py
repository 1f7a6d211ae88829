"""The streaming input path: datasets that do not fit on the device (ImageNet, a user's ImageFolder tree), read
from the host, decoded and augmented with torchvision's ImageNet transforms in worker processes, batched by Grain.

* `sources`: `ImageFolderSource(root, split)` (torchvision's `root/{train,val}/<class>/<image>`) and
  `TfdsImageSource(name, split, data_dir)` (TFDS image classification in ArrayRecord, e.g. `imagenet2012`).
* `transforms`: `ImageTransforms` (RandomResizedCrop + flip for training, Resize + CenterCrop for evaluation,
  Pillow's resampling, torchvision's ToTensor + Normalize values).
* `loader`: `make_train_iterator(...)` (an exact function of seed and step, sharded by process, resumable with
  `get_state()`/`restore(state)` or `start_step`) and `make_eval_batches(...)` (padded and masked).
* `workers`: how many Grain worker processes decode (`data.workers`: -1 one per core, 0 threads, N processes).
* `run_data`: `StreamingData.from_config(config)` for a run on `config.data.source = "imagefolder"`: the engine's
  host-fed path (`jaxkd.engine.loop.StreamingTrainLoop`, `jaxkd.engine.step.make_host_fed_step`) trains from
  its iterator, saves its position in every checkpoint and evaluates through `make_eval_batches`.
"""

from jaxkd.data.streaming.loader import (EvalBatches, TrainIterator, epoch_permutation, example_rng, make_eval_batches,
                                         make_train_iterator)
from jaxkd.data.streaming.sources import ImageFolderSource, TfdsImageSource
from jaxkd.data.streaming.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransforms, sample_crop

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalBatches",
    "ImageFolderSource",
    "ImageTransforms",
    "TfdsImageSource",
    "TrainIterator",
    "epoch_permutation",
    "example_rng",
    "make_eval_batches",
    "make_train_iterator",
    "sample_crop",
]
