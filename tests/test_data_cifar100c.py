"""CIFAR-100-C reading on a small folder in the release's layout (np.save of uint8 NHWC blocks + labels.npy)."""

import numpy as np
import pytest

from jaxkd.data import cifar100c
from jaxkd.errors import UserError

BLOCK = 6  # images per severity here; 10,000 in the release


@pytest.fixture
def release(tmp_path):
    """A folder like the unpacked CIFAR-100-C.tar, with three corruptions; returns (folder, clean labels, images)."""
    rng = np.random.default_rng()
    clean_labels = rng.integers(0, 100, BLOCK)
    np.save(tmp_path / "labels.npy", np.tile(clean_labels, 5).astype(np.int64))
    written = {}
    for name in ("brightness", "fog", "zoom_blur"):
        written[name] = rng.integers(0, 256, (5 * BLOCK, 32, 32, 3), dtype=np.uint8)
        np.save(tmp_path / f"{name}.npy", written[name])
    return tmp_path, clean_labels, written


def test_corruption_list_is_the_seeds_nineteen_in_order():
    assert cifar100c.CORRUPTIONS == (
        "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
        "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate", "saturate",
        "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")


def test_missing_corruptions_are_reported_by_name_and_the_others_load(release):
    folder, _, written = release
    opened = cifar100c.open_cifar100c(folder)
    assert opened.available == ("brightness", "fog", "zoom_blur")
    assert opened.missing == tuple(c for c in cifar100c.CORRUPTIONS if c not in written)
    seen = [(s.corruption, s.severity) for s in opened]
    assert seen == [(c, k) for c in ("brightness", "fog", "zoom_blur") for k in (1, 2, 3, 4, 5)]
    with pytest.raises(UserError, match=r"contrast\.npy is missing"):
        opened.severity("contrast", 1)


def test_severities_are_consecutive_blocks_with_their_labels(release):
    folder, clean_labels, written = release
    opened = cifar100c.open_cifar100c(folder)
    assert opened.block_size == BLOCK
    for part in opened:
        start = (part.severity - 1) * BLOCK
        np.testing.assert_array_equal(part.images, written[part.corruption][start:start + BLOCK])
        np.testing.assert_array_equal(part.labels, clean_labels)
        assert part.labels.dtype == np.int32 and part.images.dtype == np.uint8


def test_images_are_memory_mapped_not_loaded(release):
    folder, _, _ = release
    part = cifar100c.open_cifar100c(folder).severity("fog", 3)
    assert isinstance(part.images.base, np.memmap) or isinstance(part.images, np.memmap)
    assert not part.images.flags.writeable


def test_missing_labels_file_names_the_file(release):
    folder, _, _ = release
    (folder / "labels.npy").unlink()
    with pytest.raises(UserError, match=r"labels\.npy.*\(50000,\)"):
        cifar100c.open_cifar100c(folder)


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cifar100c.open_cifar100c(tmp_path / "CIFAR-100-C")


def test_labels_not_divisible_into_five_severities(release):
    folder, _, _ = release
    np.save(folder / "labels.npy", np.zeros(5 * BLOCK + 1, np.int64))
    with pytest.raises(UserError, match=r"labels\.npy holds int64 \(31,\)"):
        cifar100c.open_cifar100c(folder)


def test_wrong_shape_or_dtype_names_the_file_and_the_expected_shape(release):
    folder, _, _ = release
    np.save(folder / "fog.npy", np.zeros((5 * BLOCK, 32, 32, 3), np.float32))
    np.save(folder / "zoom_blur.npy", np.zeros((5 * BLOCK - 5, 32, 32, 3), np.uint8))
    opened = cifar100c.open_cifar100c(folder)
    with pytest.raises(UserError, match=r"fog\.npy holds float32 .*expected \(30, 32, 32, 3\) uint8"):
        opened.severity("fog", 1)
    with pytest.raises(UserError, match=r"zoom_blur\.npy holds uint8 \(25, 32, 32, 3\)"):
        opened.severity("zoom_blur", 1)
    assert opened.severity("brightness", 5).images.shape == (BLOCK, 32, 32, 3)  # the others still work


def test_truncated_file_is_a_user_error(release):
    folder, _, _ = release
    path = folder / "brightness.npy"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"brightness\.npy is not a readable \.npy"):
        cifar100c.open_cifar100c(folder).severity("brightness", 1)


def test_unknown_names_and_severities_are_user_errors(release):
    folder, _, _ = release
    with pytest.raises(UserError, match="unknown CIFAR-100-C corruption"):
        cifar100c.open_cifar100c(folder, corruptions=("fog", "rain"))
    with pytest.raises(UserError, match="severity"):
        cifar100c.open_cifar100c(folder).severity("fog", 6)
