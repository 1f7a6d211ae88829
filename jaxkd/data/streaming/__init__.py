"""The streaming input path: datasets that do not fit on the device (ImageNet, a user's ImageFolder tree), read
from the host, decoded and augmented with torchvision's ImageNet transforms in worker processes, batched by Grain.

* `sources`: `ImageFolderSource(root, split)` (torchvision's `root/{train,val}/<class>/<image>`) and
  `TfdsImageSource(name, split, data_dir)` (TFDS image classification in ArrayRecord, e.g. `imagenet2012`).
* `transforms`: `ImageTransforms` (RandomResizedCrop + flip for training, Resize + CenterCrop for evaluation,
  Pillow's resampling, torchvision's ToTensor + Normalize values).
* `loader`: `make_train_iterator(...)` (an exact function of seed and step, sharded by process, resumable with
  `get_state()`/`restore(state)` or `start_step`) and `make_eval_batches(...)` (padded and masked).

Not wired into training yet: the training loop is being made one loop for every data path. It will plug in as
follows (the device-resident CIFAR path stays as it is):
1. before anything compiles, build the source (its checks raise one UserError for bad data) and
   `ImageTransforms` from `config.data`;
2. `make_train_iterator(source, transforms, config.seed, config.batch_size, jax.process_index(),
   jax.process_count(), start_step=the restored step, num_epochs=config.epochs, workers=config.data.workers)`;
   each batch's arrays become global arrays with `jax.make_array_from_process_local_data(sharding, local)`,
   the step normalizes `image` with `transforms.normalize` and weights by `mask` (all True with drop_last);
3. the run checkpoint stores `iterator.get_state()` (a small JSON dict, e.g. with Orbax's JsonSave) beside the
   train state, and a resumed run calls `iterator.restore(state)`;
4. evaluation iterates `make_eval_batches(...)` and counts only `mask`ed examples.
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
