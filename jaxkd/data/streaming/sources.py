"""Random-access image-classification sources for the streaming path: an ImageFolder tree and TFDS datasets.

Both give `len(source)`, `source.label(index)`, `source.image(index)` (an RGB PIL image, decoded by Pillow as
torchvision's `pil_loader` decodes it), `source.name(index)` (for error messages), `classes` and `num_classes`.
They hold only names and paths, so that Grain can pickle them into its worker processes.

* `ImageFolderSource(root, split)`: torchvision's layout `root/{train,val}/<class>/<image>`. The classes are the
  sorted folder names of `root/train` (torchvision's `find_classes`), for every split, so that a label means the
  same class in training and evaluation; the images of a class are listed as torchvision's `make_dataset` lists
  them (sorted walk, nested folders included). Every file that is not hidden is an example: one that Pillow
  cannot read is an error, not skipped. Local paths or `gs://` (through etils.epath, `pip install -e '.[cloud]'`).
* `TfdsImageSource(name, split, data_dir)`: any TFDS image-classification dataset prepared in ArrayRecord
  (`imagenet2012` among them), read with `tfds.data_source`; the encoded image bytes are decoded here by Pillow
  (not by TFDS, which may use OpenCV), so both sources feed the transforms the same pixels.

Mistakes in the data are one `UserError` naming the file or folder, raised when the source is opened (before any
compile): a missing folder, an empty class folder, a validation class that training lacks, and with `check="quick"`
(the default) a file Pillow cannot identify and a JPEG or PNG whose end is missing (truncated). `check="full"`
decodes every image first (a JPEG cut short but closed by an end marker still decodes, in Pillow as in torchvision:
neither check finds it); `check="none"` (TFDS's default: a check reads the whole dataset) leaves it to the read,
which raises the same kind of error naming the file (in a worker process too) rather than skipping it.

`skip_unreadable=True` (config `data.skip_unreadable`) turns the open-time check's failures into skipped examples
instead (`skipped`: {file: why}): the split is then the readable files, in the same order, on every process and
on every start, so an epoch's length and batches exclude them by construction. A file that becomes
unreadable after the source opened is still an error when read, never skipped then (that would shorten an epoch
silently). A split that lacks some of the classes of `classes_from` keeps their indices (`missing_classes` names
them): torchvision's `ImageFolder(root/val)` would renumber the classes it finds, so every later label would
shift; its `make_dataset` given the training classes refuses the split instead.
"""

from __future__ import annotations

import concurrent.futures
import io
import os

import numpy as np
from PIL import Image

from jaxkd.errors import UserError
from jaxkd.io.paths import as_path, check_cloud_location, is_url

CHECKS = ("quick", "full", "none")
CHECK_THREADS = 16  # opening files is I/O: threads overlap the waits (more so on gs://)
CHECK_CHUNK = 4096
JPEG_END = b"\xff\xd9"  # the EOI marker every complete JPEG ends with
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk (type and CRC) every complete PNG ends with


def _read_image(path, what: str) -> Image.Image:
    """The RGB image stored in `path` (a file path or a file-like object), as torchvision's `pil_loader` reads it,
    or one UserError naming `what` when Pillow cannot decode it (not an image, truncated, damaged)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{what}: not a readable image ({type(error).__name__}: {error})") from None


def _check_image(opener, what: str, full: bool) -> None:
    """Raises one UserError naming `what` if the image `opener()` returns cannot be opened or identified by
    Pillow, or, for a JPEG or PNG, lacks its end marker (a truncated file); `full`: decodes it whole."""
    try:
        file = opener()
    except OSError as error:  # permissions, a vanished file
        raise UserError(f"{what}: cannot be read ({type(error).__name__}: {error})") from None
    with file:
        if full:
            _read_image(file, what)
            return
        try:
            with Image.open(file) as image:
                image_format = image.format
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"{what}: not a readable image ({type(error).__name__}: {error})") from None
        end = {"JPEG": JPEG_END, "PNG": PNG_END}.get(image_format)
        if end is not None:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64))
            if end not in file.read().rstrip(b"\0"):  # some writers pad a JPEG's end with zeros
                raise UserError(f"{what}: truncated {image_format} (its end marker is missing); replace the file "
                                f"or remove it")


def _check_all(source, opener_of, check: str, skip: bool = False) -> dict[int, str]:
    """Runs `_check_image` over every example of `source` (`opener_of(k)` opens example k's encoded image) in
    threads, CHECK_CHUNK at a time (ImageNet's 1.28M futures at once would hold gigabytes). The first failure in
    the source's order is raised; with `skip`, every failure is returned instead ({example: its error line})."""
    failures = {}
    if check == "none":
        return failures
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        for start in range(0, len(source), CHECK_CHUNK):
            chunk = range(start, min(start + CHECK_CHUNK, len(source)))
            futures = [pool.submit(_check_image, opener_of(k), source.name(k), check == "full") for k in chunk]
            for k, future in zip(chunk, futures):
                try:
                    future.result()
                except UserError as error:
                    if not skip:
                        raise
                    failures[k] = str(error)
    return failures


def _checked_choice(check: str) -> str:
    if check not in CHECKS:
        raise UserError(f"data.check must be one of {', '.join(CHECKS)}, got {check!r}")
    return check


class ImageFolderSource:
    """The images of `root/<split>/<class>/...`, labelled with the class indices of `root/<classes_from>`;
    `skip_unreadable`: files the open-time check refuses are left out (`skipped`) rather than an error."""

    def __init__(self, root, split: str, *, classes_from: str = "train", check: str = "quick",
                 skip_unreadable: bool = False):
        check = _checked_choice(check)
        self.root, self.split = str(root), split
        if is_url(root):
            check_cloud_location(root, f"image folder {root}")  # a missing bucket: one line, no client retries
        split_dir = as_path(root) / split
        classes = self._class_folders(as_path(root) / classes_from)
        class_index = {name: i for i, name in enumerate(classes)}
        found = self._class_folders(split_dir) if split != classes_from else classes
        unknown = [name for name in found if name not in class_index]
        if unknown:
            raise UserError(f"{split_dir / unknown[0]}: class {unknown[0]!r} is not a class of "
                            f"{as_path(root) / classes_from} (whose folders define the labels); "
                            f"{len(unknown)} such folder(s) in {split_dir}")
        paths, labels = [], []
        for name in found:
            files = self._files_under(split_dir / name)
            if not files:
                raise UserError(f"{split_dir / name}: class folder holds no image (every class folder needs one)")
            paths += files
            labels += [class_index[name]] * len(files)
        self.classes = classes
        self.missing_classes = [name for name in classes if name not in found]
        self.paths = paths
        self.labels = np.asarray(labels, np.int32)
        failures = _check_all(self, lambda k: (lambda: as_path(self.paths[k]).open("rb")), check,
                              skip=skip_unreadable)
        self.skipped = {self.name(k): failures[k].removeprefix(f"{self.name(k)}: ") for k in sorted(failures)}
        if failures:
            kept = np.setdiff1d(np.arange(len(paths)), list(failures))
            present = set(np.unique(self.labels[kept]).tolist())
            emptied = [name for name in found if class_index[name] not in present]
            if emptied:
                raise UserError(f"{split_dir / emptied[0]}: every file of this class folder is unreadable (all "
                                f"skipped by data.skip_unreadable)")
            self.paths = [paths[k] for k in kept]
            self.labels = self.labels[kept]

    @staticmethod
    def _class_folders(folder) -> list[str]:
        """The sorted names of the subfolders of `folder` (torchvision's `find_classes`)."""
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder (an ImageFolder tree is ROOT/train/<class>/<image> and "
                            f"ROOT/val/<class>/<image>)")
        classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
        if not classes:
            raise UserError(f"{folder}: no class folders in it (expected {folder}/<class>/<image>)")
        return classes

    @staticmethod
    def _files_under(folder) -> list[str]:
        """Every file under `folder`, in torchvision's `make_dataset` order: folders by sorted path, the files of
        each by sorted name; hidden files (.DS_Store) and folders left out."""
        if not is_url(folder):
            walk = sorted(os.walk(folder, followlinks=True))
            return [os.path.join(here, name) for here, dirs, names in walk
                    if not any(part.startswith(".") for part in os.path.relpath(here, folder).split(os.sep)
                               if part != ".")
                    for name in sorted(names) if not name.startswith(".")]
        listing, pending = [], [folder]
        while pending:
            here = pending.pop()
            entries = list(here.iterdir())
            names = sorted(e.name for e in entries if not e.is_dir() and not e.name.startswith("."))
            listing.append((str(here), names))
            pending += [e for e in entries if e.is_dir() and not e.name.startswith(".")]
        return [f"{here}/{name}" for here, names in sorted(listing) for name in names]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def name(self, index: int) -> str:
        return self.paths[index]

    def image(self, index: int) -> Image.Image:
        path = self.paths[index]
        if is_url(path):
            with as_path(path).open("rb") as file:
                return _read_image(io.BytesIO(file.read()), path)
        return _read_image(path, path)

    def example(self, index: int) -> tuple[Image.Image, int]:
        """The image and label of one example."""
        return self.image(index), self.label(index)


class TfdsImageSource:
    """Split `split` of the TFDS dataset `name` (prepared in ArrayRecord in `data_dir`), its images in the
    feature `image_key` and labels in the ClassLabel `label_key`; `skip_unreadable`: records whose image the check
    (at least "quick": it reads every record once) refuses are left out (`skipped`)."""

    def __init__(self, name: str, split: str, data_dir=None, *, image_key: str = "image", label_key: str = "label",
                 check: str = "none", skip_unreadable: bool = False):
        check = _checked_choice(check)
        if skip_unreadable and check == "none":
            check = "quick"
        self.dataset, self.split = name, split
        self.data_dir = None if data_dir is None else str(as_path(data_dir))
        self.image_key, self.label_key = image_key, label_key
        self._records, self._kept = None, None  # _kept: the record of each example, when some are skipped
        records = self._open()
        builder_dir = getattr(getattr(records, "dataset_info", None), "data_dir", self.data_dir)
        features = records.dataset_info.features
        if image_key not in features or label_key not in features:
            raise UserError(f"TFDS {name} in {builder_dir} has no {image_key!r} and {label_key!r} features (it "
                            f"has {', '.join(features.keys())}); name them with image_key/label_key")
        label_feature = features[label_key]
        self.classes = list(getattr(label_feature, "names", None) or [])
        self._num_classes = getattr(label_feature, "num_classes", None)
        if not self._num_classes:
            raise UserError(f"TFDS {name}: feature {label_key!r} is not a ClassLabel")
        self._length = len(records)
        self.missing_classes = []  # every record's label is read only when asked for (`label`)
        failures = _check_all(self, lambda k: (lambda: io.BytesIO(self._encoded(k))), check, skip=skip_unreadable)
        self.skipped = {self.name(k): failures[k].removeprefix(f"{self.name(k)}: ") for k in sorted(failures)}
        if failures:
            self._kept = np.setdiff1d(np.arange(self._length), list(failures))
            self._length = len(self._kept)

    def _open(self):
        """`tfds.data_source` over the split, images left encoded (decoded by Pillow in `image`)."""
        if self._records is None:
            import tensorflow_datasets as tfds

            where = self.data_dir or "TFDS's default data directory"
            try:
                self._records = tfds.data_source(self.dataset, split=self.split, data_dir=self.data_dir,
                                                 download=False,
                                                 decoders={self.image_key: tfds.decode.SkipDecoding()})
            except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, AssertionError) as error:
                raise UserError(f"TFDS {self.dataset} is not prepared in {where} ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}); prepare it in ArrayRecord "
                                f"(docs/data.md)") from None
            except (ValueError, KeyError) as error:
                raise UserError(f"TFDS {self.dataset} in {where} cannot be read for split {self.split!r}: "
                                f"{error}") from None
        return self._records

    def __getstate__(self):
        return {**self.__dict__, "_records": None}  # each worker process opens its own reader

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return self._length

    def _record_index(self, index: int) -> int:
        return index if self._kept is None else int(self._kept[index])

    def _record(self, index: int):
        return self._open()[self._record_index(index)]

    def _encoded(self, index: int) -> bytes:
        return self._record(index)[self.image_key]

    def label(self, index: int) -> int:
        return int(self._record(index)[self.label_key])

    def name(self, index: int) -> str:
        return f"TFDS {self.dataset} {self.split}[{self._record_index(index)}]"

    def image(self, index: int) -> Image.Image:
        return _read_image(io.BytesIO(self._encoded(index)), self.name(index))

    def example(self, index: int) -> tuple[Image.Image, int]:
        """The image and label of one record, read once."""
        record = self._record(index)
        return _read_image(io.BytesIO(record[self.image_key]), self.name(index)), int(record[self.label_key])
