"""Datasets as uint8 NHWC arrays, from three sources behind one function, `load_split`.

* ``tfds``: TFDS ``cifar100`` read with ``tfds.data_source`` (ArrayRecord), so no TensorFlow is needed to read.
  Preparing it needs TensorFlow (TFDS's cifar100 builder reads its archive with ``tf.io.gfile`` and encodes PNGs
  with ``tf.image``); see docs/data.md.
* ``cifar100-python``: the ``cifar-100-python`` pickles that torchvision's ``CIFAR100`` downloads into ``./data``,
  as a folder or as the ``cifar-100-python.tar.gz`` archive; it can download that archive itself.
* ``digits``: scikit-learn's bundled 8x8 digits upsampled to 32x32x3 (or 8x8, 16x16: `data.digits_size`), the
  offline dataset for demos and tests.

Every source returns the examples in the same order as the original files (TFDS's shuffled records are put back
in the order of their ``id``), so `Split.index` names the same image whichever source loaded it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from jaxkd.errors import UserError
from jaxkd.io.paths import as_path, check_cloud_location, is_url

SOURCES = ("tfds", "cifar100-python", "digits")
# config.data.source values read from the host by the streaming loader (jaxkd/data/streaming/), not held on the device
STREAMING_SOURCES = ("imagefolder", "tfds_images")
SOURCE_CLASSES = {"tfds": 100, "cifar100-python": 100, "digits": 10}  # the number of classes of each source
SPLITS = ("train", "test")

CIFAR100_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_PYTHON_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # torchvision's CIFAR100.tgz_md5
CIFAR100_PYTHON_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_PYTHON_FOLDER = "cifar-100-python"
DEFAULT_CIFAR100_PYTHON_DIR = "./data"  # torchvision's and the seed's `root`
# How a user asks for a download: the commands' settings behind load_split's `download` argument.
DOWNLOAD_FLAGS = "--config.data.download=True for jaxkd.train, --download for jaxkd.tools.evaluate and jaxkd.tools.robustness"

DIGITS_SIZES = (8, 16, 32)  # digits' side: scikit-learn's 8 pixels repeated 1, 2 or 4 times
DIGITS_TEST_EVERY = 5  # within each class, in sklearn's order, examples 0, 5, 10, ... are the test split


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset, in host memory.

    images: uint8 (N, S, S, 3), NHWC (S = 32 but for digits at another `data.digits_size`).  labels: int32 (N,).
    index: int32 (N,), the stable position 0..N-1 of each example in its split (CRD's memory bank is addressed by
    it).  num_classes: number of label values.
    """

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    num_classes: int

    def __post_init__(self):
        n = len(self.labels)
        shape = self.images.shape
        if self.images.dtype != np.uint8 or len(shape) != 4 or shape[0] != n or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"images must be uint8 ({n}, S, S, 3), got {self.images.dtype} {shape}")
        if self.labels.dtype != np.int32 or self.index.dtype != np.int32 or self.index.shape != (n,):
            raise ValueError("labels and index must be int32 vectors of the same length")

    def __len__(self) -> int:
        return len(self.labels)


def load_split(source: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
               digits_size: int = 32) -> Split:
    """Loads split 'train' or 'test' of `source` (one of SOURCES).

    data_dir: tfds: the TFDS data directory (None: TFDS's default, ~/tensorflow_datasets or $TFDS_DATA_DIR);
    cifar100-python: the `cifar-100-python` folder, its parent, or the .tar.gz (None: ./data); digits: unused.
    download: fetch the data when it is not there yet (tfds: prepare it, which needs TensorFlow;
    cifar100-python: download the archive into data_dir). digits_size: digits' side, one of DIGITS_SIZES.
    """
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for source {source!r}; valid splits: {', '.join(SPLITS)}")
    if source != "digits" and data_dir is not None and is_url(data_dir):
        check_cloud_location(data_dir, f"data_dir {data_dir}")
    if source == "tfds":
        return _load_tfds_cifar100(split, data_dir, download)
    if source == "cifar100-python":
        return _load_cifar100_python(split, data_dir, download)
    return _load_digits(split, digits_size)


def _make_split(images: np.ndarray, labels: np.ndarray, num_classes: int) -> Split:
    labels = np.asarray(labels, dtype=np.int32)
    return Split(np.ascontiguousarray(images, dtype=np.uint8), labels, np.arange(len(labels), dtype=np.int32),
                 num_classes)


# --------------------------------------------------------------------------------------------------- tfds


class _MissingVariantFolder(logging.Filter):
    """Drops TFDS's "Variant folder ... has no dataset_info.json" warning: it names a folder that does not
    exist before the not-prepared error says the same thing usefully."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _without_tfds_missing_folder_warning():
    logger, dropped = logging.getLogger("absl"), _MissingVariantFolder()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def _load_tfds_cifar100(split: str, data_dir, download: bool) -> Split:
    """Reads TFDS cifar100 through `tfds.data_source` (random access, no TensorFlow), in the original order."""
    import tensorflow_datasets as tfds

    data_dir = None if data_dir is None else str(as_path(data_dir))  # TFDS reads gs:// itself (etils.epath)
    where = data_dir or "TFDS's default data directory"
    with _without_tfds_missing_folder_warning():
        builder = tfds.builder("cifar100", data_dir=data_dir)
        prepared = builder.is_prepared()
    if not prepared:
        if not download:
            raise UserError(f"TFDS cifar100 is not prepared in {where}; let it be prepared ({DOWNLOAD_FLAGS}; "
                            f"needs TensorFlow), point the data directory at a prepared copy, or use source "
                            f"'cifar100-python' (docs/data.md)")
        # TFDS's cifar100 builder reads its archive with tf.io.gfile and encodes PNGs with tf.image; TFDS 4.9
        # also imports importlib_resources there without declaring it. Refuse before downloading anything.
        missing = [name for name in ("tensorflow", "importlib_resources") if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"preparing TFDS cifar100 needs {' and '.join(missing)}: `pip install tensorflow-cpu "
                            f"importlib_resources` once, or use source 'cifar100-python', which downloads without "
                            f"them (docs/data.md)")
        builder = tfds.builder("cifar100", data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format not in ("array_record", "parquet"):
        raise UserError(f"TFDS cifar100 in {builder.data_dir} is stored as {file_format}, which only TensorFlow reads; "
                        f"prepare it again with file_format='array_record' into another data_dir (docs/data.md)")
    try:
        source = tfds.data_source("cifar100", split=split, data_dir=data_dir, download=False)
        images = np.empty((len(source), 32, 32, 3), np.uint8)
        labels = np.empty(len(source), np.int32)
        ids = []
        for i in range(len(source)):
            record = source[i]
            images[i], labels[i] = record["image"], record["label"]
            ids.append(record["id"])
    except ImportError as error:  # TFDS decodes PNG with OpenCV or Pillow
        raise UserError(f"reading TFDS cifar100 images needs Pillow: `pip install pillow` ({error})") from None
    except (ValueError, KeyError) as error:
        raise UserError(f"TFDS cifar100 in {builder.data_dir} cannot be read for split {split!r}: {error}") from None
    order = _original_order(ids, split)
    num_classes = builder.info.features["label"].num_classes
    return _make_split(images[order], labels[order], num_classes)


def _original_order(ids, split: str) -> np.ndarray:
    """The permutation that sorts TFDS records by their id 'train_00042' (the position in the original file).

    TFDS shuffles records when it prepares a dataset; sorting restores the order of the CIFAR files, so indices
    agree with the other sources. Ids of another form (e.g. under tfds.testing.mock_data) keep the record order.
    """
    pattern = re.compile(rf"{split}_(\d+)")
    positions = []
    for record_id in ids:
        match = pattern.fullmatch(record_id.decode() if isinstance(record_id, bytes) else str(record_id))
        if match is None:
            return np.arange(len(ids))
        positions.append(int(match.group(1)))
    positions = np.array(positions, dtype=np.int64)
    if not np.array_equal(np.sort(positions), np.arange(len(ids))):
        return np.arange(len(ids))
    return np.argsort(positions)


# -------------------------------------------------------------------------------------------- cifar100-python


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python files contain: builtins, and numpy arrays of plain dtypes.

    The files hold a dict of str, int, list and one uint8 ndarray (pickled by Python 2 with numpy 1.x). Any other
    global is refused, so a hostile file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3's protocol-2 pickles write bytes as _codecs.encode(str, 'latin1')
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR python format")
        if module == "numpy.core.multiarray":  # numpy 2 renamed the module; avoid its deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle_cifar_file(payload: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one CIFAR-100 python pickle (dict with 'data' (N, 3072) uint8 CHW rows and 'fine_labels').

    what: a name for the file in error messages. Returns images uint8 (N, 32, 32, 3) and labels int32 (N,).
    """
    try:
        entry = _CifarUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as error:  # anything going wrong while decoding a user's file is a problem with the file
        raise UserError(f"{what} is not a readable CIFAR-100 python pickle (truncated or another format?): "
                        f"{type(error).__name__}: {error}") from None
    if not isinstance(entry, dict):
        raise UserError(f"{what} holds a {type(entry).__name__}, expected the CIFAR-100 dict with 'data' and "
                        f"'fine_labels'")
    entry = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}
    data, labels = entry.get("data"), entry.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{what}: 'data' must be a uint8 array (N, 3072), found {found}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 99)):
        raise UserError(f"{what}: 'fine_labels' must hold {len(data)} labels in 0..99, found shape {labels.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _locate_cifar100_python(data_dir: Path) -> Path | None:
    """The folder holding train/test/meta or the .tar.gz that `data_dir` designates; None when there is none."""
    if data_dir.is_file():
        return data_dir
    candidates = (data_dir, data_dir / CIFAR100_PYTHON_FOLDER)
    for folder in candidates:
        if any((folder / name).is_file() for name in ("train", "test", "meta")):
            return folder
    archive = data_dir / CIFAR100_PYTHON_ARCHIVE
    return archive if archive.is_file() else None


def _load_cifar100_python(split: str, data_dir, download: bool) -> Split:
    data_dir = as_path(data_dir if data_dir is not None else DEFAULT_CIFAR100_PYTHON_DIR)
    location = _locate_cifar100_python(data_dir)
    if location is None and download and not is_url(data_dir):  # a bucket is given the data, not downloaded into
        location = download_cifar100_python(data_dir)
    if location is None:
        raise UserError(f"no CIFAR-100 python data in {data_dir}: expected a folder with files train/test/meta, a "
                        f"{CIFAR100_PYTHON_FOLDER}/ folder inside it, or {CIFAR100_PYTHON_ARCHIVE} (or download "
                        f"it: {DOWNLOAD_FLAGS})")
    if location.is_dir():
        path = location / split
        if not path.is_file():
            raise UserError(f"CIFAR-100 python folder {location} has no file {split!r} (expected train, test, meta)")
        images, labels = _unpickle_cifar_file(path.read_bytes(), str(path))
    else:
        images, labels = _unpickle_cifar_file(_read_archive_member(location, split), f"{location}:{split}")
    return _make_split(images, labels, num_classes=100)


def _read_archive_member(archive: Path, split: str) -> bytes:
    """The bytes of `cifar-100-python/<split>` inside the .tar.gz, without extracting anything to disk."""
    member = f"{CIFAR100_PYTHON_FOLDER}/{split}"
    try:
        with archive.open("rb") as file, tarfile.open(fileobj=file, mode="r:*") as tar:
            try:
                fileobj = tar.extractfile(member)
            except KeyError:
                fileobj = None
            if fileobj is None:
                raise UserError(f"archive {archive} has no file {member} (expected the {CIFAR100_PYTHON_ARCHIVE} "
                                f"of the CIFAR-100 python version)")
            return fileobj.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"{archive} is not a readable {CIFAR100_PYTHON_ARCHIVE} (truncated or another format?): "
                        f"{error}") from None


def download_cifar100_python(directory: str | os.PathLike, *, url: str = CIFAR100_PYTHON_URL,
                             md5: str = CIFAR100_PYTHON_MD5) -> Path:
    """Downloads the CIFAR-100 python archive into `directory` (kept if already there), checking its MD5.

    Needs nothing beyond the standard library, so it works where TFDS's preparation (TensorFlow) does not.
    The file is written under a temporary name and renamed once verified. Returns the archive's path.
    """
    directory = Path(directory).expanduser()
    target = directory / CIFAR100_PYTHON_ARCHIVE
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise UserError(f"could not download {url} into {directory}: {error}; download it by hand and pass its "
                        f"folder as data_dir") from None
    if digest.hexdigest() != md5:
        partial.unlink()
        raise UserError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}; try again or download "
                        f"it by hand")
    os.replace(partial, target)
    return target


# ------------------------------------------------------------------------------------------------------ digits


def digits_test_mask(labels: np.ndarray) -> np.ndarray:
    """The fixed test split of `digits`: within each class, in the dataset's order, every DIGITS_TEST_EVERY-th
    example starting with the first (no RNG, so it cannot change with a library version). 364 of 1,797."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        mask[members[::DIGITS_TEST_EVERY]] = True
    return mask


def _load_digits(split: str, size: int = 32) -> Split:
    """scikit-learn's digits (values 0..16, 8x8) as uint8 0..255, nearest-neighbour to `size` x `size` (x4 to
    32x32 by default), gray to RGB."""
    if size not in DIGITS_SIZES:
        raise UserError(f"digits_size {size}: must be one of {', '.join(map(str, DIGITS_SIZES))}")
    digits, labels = _sklearn_digits()
    gray = np.round(digits * (255.0 / 16.0)).astype(np.uint8)
    factor = size // 8
    big = np.repeat(np.repeat(gray, factor, axis=1), factor, axis=2)
    images = np.repeat(big[..., None], 3, axis=3)
    test = digits_test_mask(labels)
    keep = test if split == "test" else ~test
    return _make_split(images[keep], labels[keep], num_classes=10)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 0..16, labels int64): what `sklearn.datasets.load_digits` returns, read from
    the file scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`, a row of 64 pixels and the label per
    image) without importing scikit-learn, which took 0.7-1 s of every run's start on digits; its own loader
    where the file is not found."""
    path = _digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    rows = np.loadtxt(path, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


def _digits_file() -> Path | None:
    """scikit-learn's digits file, found without importing scikit-learn; None where it is not there."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None
