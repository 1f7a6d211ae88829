"""A run's streaming data from its config: the training and validation sources, the transforms, the loader
settings, and the training iterator and evaluation batches of this process (jaxkd.engine's host-fed data path).

`config.data.source = "imagefolder"` reads `config.data.data_dir/{train,val}/<class>/<image>`, and
`"tfds_images"` the splits "train" and "validation" of the TFDS image-classification dataset
`config.data.tfds_name` (e.g. imagenet2012, prepared in ArrayRecord in `data_dir` or TFDS's default); other split
names with `data.train_split` and `data.eval_split` (e.g. "test", for a TFDS dataset without "validation"). The
images are cropped to `data.image_size` for training (RandomResizedCrop + flip) and to `data.eval_resize` then
`data.eval_crop` for evaluation, decoded in `data.workers` worker processes (-1, the default: one per core; 0:
threads of this process; a small validation split in threads: jaxkd/data/streaming/workers.py), and
normalized in the step with the constants of `data.normalization` ("imagenet": torchvision's). Every mistake in
the data (a missing folder, an empty class folder, a file that is not an image or truncated, a validation class
that training lacks) is one UserError when `from_config` opens the sources, before anything compiles; with
`data.skip_unreadable` the unreadable files are left out instead, named once in a warning and, all of them, in the
workdir's `skipped_files.txt` (`check_skipped_list`, `write_skipped_list`)."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from jaxkd.data.sources import STREAMING_SOURCES
from jaxkd.data.streaming.loader import TrainIterator, make_eval_batches, make_train_iterator
from jaxkd.data.streaming.sources import ImageFolderSource, TfdsImageSource
from jaxkd.data.streaming.transforms import ImageTransforms
from jaxkd.data.streaming.workers import describe, eval_worker_processes, worker_processes
from jaxkd.engine import distributed
from jaxkd.errors import UserError
from jaxkd.io.paths import as_path
from jaxkd.io.safe_write import write_text_atomically

TRAIN_SPLIT, EVAL_SPLIT = "train", "val"  # torchvision's ImageNet folder names
TFDS_TRAIN_SPLIT, TFDS_EVAL_SPLIT = "train", "validation"  # TFDS imagenet2012's
SKIPPED_FILES = "skipped_files.txt"  # in the workdir: every file data.skip_unreadable left out, one a line
NAMED_IN_WARNING = 5  # skipped files named in the warning line itself


def is_streaming(config) -> bool:
    """Whether the run's data comes through the streaming loader rather than as arrays held on the device."""
    return config.data.source in STREAMING_SOURCES


@dataclasses.dataclass
class StreamingData:
    """The streaming sources of a run and how its loader reads them."""

    train: ImageFolderSource | TfdsImageSource
    test: ImageFolderSource | TfdsImageSource
    transforms: ImageTransforms
    workers: int  # resolved: worker processes (0: threads)
    skipped: dict[str, str] | None = None  # with data.skip_unreadable: {file left out: why}

    @classmethod
    def from_config(cls, config) -> StreamingData:
        """Opens (and checks) the training and evaluation splits (`data.train_split`, `data.eval_split`); one
        UserError for a setting the streaming path does not serve or for bad data."""
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
        skip = bool(data.skip_unreadable)
        if data.source == "tfds_images":
            train_split, eval_split = data.train_split or TFDS_TRAIN_SPLIT, data.eval_split or TFDS_EVAL_SPLIT
            train = TfdsImageSource(data.tfds_name, train_split, data.data_dir or None, skip_unreadable=skip)
            test = TfdsImageSource(data.tfds_name, eval_split, data.data_dir or None, skip_unreadable=skip)
        else:
            train_split, eval_split = data.train_split or TRAIN_SPLIT, data.eval_split or EVAL_SPLIT
            train = ImageFolderSource(data.data_dir, train_split, skip_unreadable=skip)
            test = ImageFolderSource(data.data_dir, eval_split, classes_from=train_split, skip_unreadable=skip)
        if test.missing_classes:
            distributed.print_once(
                f"warning: the {eval_split} split has no folder for {len(test.missing_classes)} of the "
                f"{train.num_classes} training classes ({', '.join(test.missing_classes[:NAMED_IN_WARNING])}"
                f"{', ...' if len(test.missing_classes) > NAMED_IN_WARNING else ''}): its labels keep the training "
                f"classes' indices, its accuracy is over the classes it has", file=sys.stderr)
        skipped = {**train.skipped, **test.skipped}
        if skipped:
            named = ", ".join(list(skipped)[:NAMED_IN_WARNING])
            distributed.print_once(
                f"warning: data.skip_unreadable: {len(train.skipped)} training and {len(test.skipped)} validation "
                f"file(s) skipped as unreadable: {named}{', ...' if len(skipped) > NAMED_IN_WARNING else ''} "
                f"(all in the workdir's {SKIPPED_FILES})", file=sys.stderr)
        workers = worker_processes(data.workers)
        distributed.print_once(describe("data.workers", data.workers, workers, len(test)), flush=True)
        return cls(train, test, transforms, workers, skipped if skip else None)

    def check_skipped_list(self, workdir) -> None:
        """With data.skip_unreadable, a resumed run must skip the files its start skipped (else its epochs hold
        other examples): one UserError when `workdir/skipped_files.txt` exists and names other files."""
        path = as_path(workdir) / SKIPPED_FILES
        if self.skipped is None or not path.exists():
            return
        before = [line.split("\t")[0] for line in path.read_text().splitlines()]
        if before != list(self.skipped):
            changed = sorted(set(before) ^ set(self.skipped))
            raise UserError(f"{path}: the run started without the {len(before)} file(s) listed there, now "
                            f"{len(self.skipped)} are unreadable ({changed[0] if changed else 'in another order'} "
                            f"differs); a run resumes on the same examples: restore the data or start a new workdir")

    def write_skipped_list(self, workdir) -> None:
        """With data.skip_unreadable, every skipped file ("file<TAB>why", one a line; none: an empty file) to
        `workdir/skipped_files.txt`, after every process checked the old list (`check_skipped_list`)."""
        if self.skipped is None:
            return
        distributed.barrier("skipped files checked")
        if distributed.is_primary():
            text = "".join(f"{name}\t{why}\n" for name, why in self.skipped.items())
            write_text_atomically(text, as_path(workdir) / SKIPPED_FILES, force=True, what="the list of skipped files")

    def train_iterator(self, config, process_index: int, process_count: int, start_step: int) -> TrainIterator:
        """This process's training batches from global step `start_step` to the run's end."""
        return make_train_iterator(self.train, self.transforms, config.seed, config.batch_size, process_index,
                                   process_count, start_step, num_epochs=config.epochs, drop_last=True,
                                   workers=self.workers)

    def eval_batches(self, batch_size: int, process_index: int, process_count: int):
        """This process's validation batches of `batch_size` (global), the last padded and masked; in threads for
        a small split (`eval_worker_processes`: workers would start again on every pass)."""
        return make_eval_batches(self.test, self.transforms, batch_size, process_index, process_count,
                                 workers=eval_worker_processes(self.workers, len(self.test)))

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
