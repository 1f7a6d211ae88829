"""CIFAR-100-C (Hendrycks & Dietterich): corrupted test sets read as memory maps, by corruption and severity.

The release is one folder with `labels.npy` and one `<corruption>.npy` per corruption, each (50000, 32, 32, 3)
uint8: the 10,000 test images at severity 1, then at 2, ..., 5. Files are memory-mapped, so the 950,000 images
are never all in host memory; a missing corruption file is reported by name and the others still load. The
folder may be a `gs://` URL (`jaxkd.io.paths`): each file is then read whole when used, one corruption at a time.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxkd.errors import UserError
from jaxkd.io.paths import as_path, check_cloud_location, is_url

# The seed's list, in its order.
CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
    "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate", "saturate",
    "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
)
SEVERITIES = (1, 2, 3, 4, 5)
LABELS_FILE = "labels.npy"


@dataclasses.dataclass(frozen=True)
class CorruptedSet:
    """The images of one corruption at one severity: images uint8 (M, 32, 32, 3), a read-only memory-map view;
    labels int32 (M,)."""

    corruption: str
    severity: int
    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Cifar100C:
    """An opened CIFAR-100-C folder. Use `open_cifar100c`; `available` and `missing` list corruption names."""

    directory: Path
    labels: np.ndarray  # int32 (5 * block_size,), severities in consecutive blocks
    available: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def block_size(self) -> int:
        """Images per severity (10,000 in the release)."""
        return len(self.labels) // len(SEVERITIES)

    def images(self, corruption: str) -> np.ndarray:
        """All severities of `corruption` as a read-only memory map (5 * block_size, 32, 32, 3) uint8."""
        if corruption not in CORRUPTIONS:
            raise UserError(f"unknown CIFAR-100-C corruption {corruption!r}; valid: {', '.join(CORRUPTIONS)}")
        path = self.directory / f"{corruption}.npy"
        expected = (len(self.labels), 32, 32, 3)
        if not path.is_file():
            raise UserError(f"CIFAR-100-C file {path} is missing (expected {expected} uint8)")
        images = _open_npy(path, f"{expected} uint8")
        if images.dtype != np.uint8 or images.shape != expected:
            raise UserError(f"CIFAR-100-C file {path} holds {images.dtype} {images.shape}, expected {expected} uint8")
        return images

    def severity(self, corruption: str, severity: int) -> CorruptedSet:
        """The block of `corruption` at `severity` (1..5), with its labels."""
        if severity not in SEVERITIES:
            raise UserError(f"CIFAR-100-C severity must be one of 1..5, got {severity}")
        block = slice((severity - 1) * self.block_size, severity * self.block_size)
        return CorruptedSet(corruption, severity, self.images(corruption)[block], self.labels[block])

    def __iter__(self) -> Iterator[CorruptedSet]:
        """Every available corruption, in CORRUPTIONS order, each at severities 1..5."""
        for corruption in self.available:
            for severity in SEVERITIES:
                yield self.severity(corruption, severity)


def _open_npy(path: Path, expected: str) -> np.ndarray:
    try:
        if is_url(path):
            return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"CIFAR-100-C file {path} is not a readable .npy of {expected} (truncated?): {error}") from None


def open_cifar100c(directory: str | os.PathLike, corruptions: Sequence[str] = CORRUPTIONS) -> Cifar100C:
    """Opens the folder holding labels.npy and the <corruption>.npy files, and checks labels.npy.

    corruptions: the ones wanted (default: the seed's 19); those without a file are listed in `missing`.
    Corruption files are checked (shape, dtype, readability) when first used.
    """
    directory = as_path(directory)
    if is_url(directory):
        check_cloud_location(directory, f"CIFAR-100-C folder {directory}")
    unknown = [name for name in corruptions if name not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown CIFAR-100-C corruption(s) {', '.join(unknown)}; valid: {', '.join(CORRUPTIONS)}")
    if not directory.is_dir():
        raise UserError(f"CIFAR-100-C folder {directory} does not exist (expected the unpacked CIFAR-100-C.tar, the "
                        f"folder holding {LABELS_FILE})")
    labels_path = directory / LABELS_FILE
    if not labels_path.is_file():
        raise UserError(f"CIFAR-100-C folder {directory} has no {LABELS_FILE} (expected (50000,) integer labels)")
    labels = _open_npy(labels_path, "(50000,) integer labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0 \
            or len(labels) % len(SEVERITIES):
        raise UserError(f"CIFAR-100-C file {labels_path} holds {labels.dtype} {labels.shape}, expected (50000,) "
                        f"integer labels (a length divisible by 5: one block per severity)")
    labels = np.asarray(labels, dtype=np.int32)
    available = tuple(name for name in corruptions if (directory / f"{name}.npy").is_file())
    missing = tuple(name for name in corruptions if name not in available)
    return Cifar100C(directory, labels, available, missing)
