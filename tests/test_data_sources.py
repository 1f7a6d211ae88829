"""Data sources: files written in each real format, read back exactly; user mistakes give one-line UserErrors."""

import hashlib
import importlib.util
import io
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest

from jaxkd.data import sources
from jaxkd.errors import UserError


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(UserError, match="tfds, cifar100-python, digits"):
        sources.load_split("cifar10", "train")


def test_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match="valid splits: train, test"):
        sources.load_split("digits", "validation")


# ------------------------------------------------------------------------------------------------------ digits


def test_digits_are_sklearns_images_scaled_upsampled_and_split_per_class():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = sources.load_split("digits", "train"), sources.load_split("digits", "test")
    assert (len(train), len(test)) == (1433, 364) and train.num_classes == test.num_classes == 10
    # The fixed split: within each class, in sklearn's order, examples 0, 5, 10, ... are test examples.
    expected_test = np.concatenate([np.flatnonzero(digits.target == c)[::5] for c in range(10)])
    expected_test = np.sort(expected_test)
    expected_train = np.setdiff1d(np.arange(len(digits.target)), expected_test)
    for split, rows in ((train, expected_train), (test, expected_test)):
        assert split.images.dtype == np.uint8 and split.images.shape == (len(rows), 32, 32, 3)
        np.testing.assert_array_equal(split.labels, digits.target[rows])
        np.testing.assert_array_equal(split.index, np.arange(len(rows)))
        # Every 4x4 block of every channel holds one value: round(v * 255 / 16) of the 8x8 original.
        blocks = split.images.reshape(len(rows), 8, 4, 8, 4, 3)
        assert np.all(blocks == blocks[:, :, :1, :, :1, :1])
        np.testing.assert_array_equal(blocks[:, :, 0, :, 0, 0], np.round(digits.images[rows] * 255 / 16))
    assert train.images.max() == 255 and train.images.min() == 0


def test_digits_are_read_without_importing_scikit_learn_and_its_loader_is_the_fallback(monkeypatch):
    """The file scikit-learn ships, read directly (importing scikit-learn took 0.7-1 s of every run's start), gives
    `load_digits`'s arrays; where the file is not found, `load_digits` itself is used."""
    from sklearn.datasets import load_digits

    expected = load_digits()
    for file_found in (True, False):
        with monkeypatch.context() as patched:
            if file_found:  # `import sklearn.datasets` raises ImportError
                patched.setitem(sys.modules, "sklearn.datasets", None)
            else:
                patched.setattr(sources, "_digits_file", lambda: None)
            images, labels = sources._sklearn_digits()
        assert images.dtype == expected.images.dtype and labels.dtype == expected.target.dtype
        np.testing.assert_array_equal(images, expected.images)
        np.testing.assert_array_equal(labels, expected.target)


@pytest.mark.parametrize("size", [8, 16])
def test_digits_at_a_smaller_size_repeat_each_pixel_size_over_8_times(size):
    from sklearn.datasets import load_digits

    digits, factor = load_digits(), size // 8
    split = sources.load_split("digits", "test", digits_size=size)
    assert split.images.shape == (364, size, size, 3)
    rows = np.sort(np.concatenate([np.flatnonzero(digits.target == c)[::5] for c in range(10)]))
    blocks = split.images.reshape(364, 8, factor, 8, factor, 3)
    assert np.all(blocks == blocks[:, :, :1, :, :1, :1])
    np.testing.assert_array_equal(blocks[:, :, 0, :, 0, 0], np.round(digits.images[rows] * 255 / 16))
    with pytest.raises(UserError, match="digits_size 24: must be one of 8, 16, 32"):
        sources.load_split("digits", "test", digits_size=24)


# ------------------------------------------------------------------------------------------- cifar100-python


def _py2_str(value):
    """SHORT_BINSTRING / BINSTRING: how Python 2's cPickle writes a str (read back as str under latin1)."""
    raw = value.encode("latin1") if isinstance(value, str) else value
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def _py2_int(value):
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_value(value):
    if isinstance(value, str):
        return _py2_str(value)
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    # A uint8 matrix as numpy 1.x reduces it: _reconstruct(ndarray, (0,), 'b') then
    # __setstate__((1, shape, dtype('u1'), False, raw bytes)).
    dtype = (b"cnumpy\ndtype\n" + _py2_str("u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str("|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str("b")
            + b"\x87R" + b"(" + _py2_int(1) + _py2_int(value.shape[0]) + _py2_int(value.shape[1]) + b"\x86" + dtype
            + b"\x89" + _py2_str(value.tobytes()) + b"tb")


def _python2_pickle(entry):
    """A protocol-2 pickle written opcode by opcode the way the released files were (Python 2, numpy 1.x)."""
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in entry.items()) + b"u."


def _cifar_entry(rng, n):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, n).tolist()
    return {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": "testing batch 1 of 1",
            "fine_labels": fine, "coarse_labels": [label // 5 for label in fine], "data": data}


@pytest.fixture
def cifar_python(tmp_path):
    """torchvision's ./data layout: data/cifar-100-python/{train,test,meta} and data/cifar-100-python.tar.gz."""
    rng = np.random.default_rng()
    entries = {"train": _cifar_entry(rng, 7), "test": _cifar_entry(rng, 4)}
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, entry in entries.items():
        (folder / split).write_bytes(_python2_pickle(entry))
    (folder / "meta").write_bytes(_python2_pickle({"fine_label_names": [f"c{i}" for i in range(100)]}))
    with tarfile.open(tmp_path / "data" / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return tmp_path / "data", entries


def _expected_images(entry):
    """CIFAR rows are R plane, G plane, B plane of 32x32 each, row-major."""
    data = entry["data"]
    images = np.zeros((len(data), 32, 32, 3), np.uint8)
    for i, row in enumerate(data):
        for channel in range(3):
            images[i, :, :, channel] = row[channel * 1024:(channel + 1) * 1024].reshape(32, 32)
    return images


@pytest.mark.parametrize("where", ["folder", "parent", "archive", "parent_with_archive_only"])
def test_cifar100_python_round_trips_exactly(cifar_python, where):
    data_dir, entries = cifar_python
    if where == "parent_with_archive_only":
        for path in (data_dir / "cifar-100-python").iterdir():
            path.unlink()
        (data_dir / "cifar-100-python").rmdir()
    location = {"folder": data_dir / "cifar-100-python", "archive": data_dir / "cifar-100-python.tar.gz"}
    for split, entry in entries.items():
        loaded = sources.load_split("cifar100-python", split, location.get(where, data_dir))
        np.testing.assert_array_equal(loaded.images, _expected_images(entry))
        np.testing.assert_array_equal(loaded.labels, entry["fine_labels"])
        np.testing.assert_array_equal(loaded.index, np.arange(len(entry["data"])))
        assert loaded.num_classes == 100 and loaded.labels.dtype == np.int32


def test_cifar100_python_reads_a_python3_pickle_with_bytes_keys(tmp_path):
    # The layout documented on the CIFAR page (keys b'data', b'fine_labels'), pickled by Python 3.
    entry = _cifar_entry(np.random.default_rng(), 5)
    (tmp_path / "test").write_bytes(pickle.dumps({k.encode(): v for k, v in entry.items()}))
    loaded = sources.load_split("cifar100-python", "test", tmp_path)
    np.testing.assert_array_equal(loaded.images, _expected_images(entry))
    np.testing.assert_array_equal(loaded.labels, entry["fine_labels"])


def test_cifar100_python_missing_split_file(cifar_python):
    data_dir, _ = cifar_python
    (data_dir / "cifar-100-python" / "test").unlink()
    with pytest.raises(UserError, match=r"cifar-100-python has no file 'test'"):
        sources.load_split("cifar100-python", "test", data_dir)


def test_cifar100_python_missing_data(tmp_path):
    with pytest.raises(UserError, match=r"no CIFAR-100 python data in .*cifar-100-python\.tar\.gz \(or download "
                                        r"it: --config\.data\.download=True for jaxkd\.train, --download for"):
        sources.load_split("cifar100-python", "train", tmp_path)


def test_cifar100_python_truncated_file(cifar_python):
    data_dir, _ = cifar_python
    path = data_dir / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:10_000])
    with pytest.raises(UserError, match=r"train is not a readable CIFAR-100 python pickle \(truncated"):
        sources.load_split("cifar100-python", "train", data_dir)


def test_cifar100_python_file_that_is_not_a_pickle(cifar_python):
    data_dir, _ = cifar_python
    (data_dir / "cifar-100-python" / "train").write_text("train,label\nimg0.png,3\n")
    with pytest.raises(UserError, match="not a readable CIFAR-100 python pickle"):
        sources.load_split("cifar100-python", "train", data_dir)


def test_cifar100_python_wrong_layout_inside_the_pickle(tmp_path):
    (tmp_path / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [1, 2]}))
    with pytest.raises(UserError, match=r"'data' must be a uint8 array \(N, 3072\), found uint8 \(2, 100\)"):
        sources.load_split("cifar100-python", "train", tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_cifar100_python_refuses_a_pickle_that_would_run_code(tmp_path):
    (tmp_path / "train").write_bytes(pickle.dumps({"data": _RunsCode()}))
    with pytest.raises(UserError, match="refusing to load builtins.exec"):
        sources.load_split("cifar100-python", "train", tmp_path)


def test_cifar100_python_archive_without_the_split(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/meta")
        payload = pickle.dumps({"fine_label_names": []})
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match="has no file cifar-100-python/train"):
        sources.load_split("cifar100-python", "train", archive)


def test_cifar100_python_truncated_archive(cifar_python):
    data_dir, _ = cifar_python
    archive = data_dir / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2_000])
    with pytest.raises(UserError, match=r"cifar-100-python\.tar\.gz is not a readable"):
        sources.load_split("cifar100-python", "train", archive)


def test_download_checks_md5_and_renames_into_place(cifar_python, tmp_path):
    data_dir, entries = cifar_python
    archive = data_dir / "cifar-100-python.tar.gz"
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = tmp_path / "fresh"
    with pytest.raises(UserError, match="expected 0123"):
        sources.download_cifar100_python(target, url=archive.as_uri(), md5="0123")
    assert not any(target.iterdir())  # nothing half-written is left behind
    path = sources.download_cifar100_python(target, url=archive.as_uri(), md5=md5)
    assert path == target / "cifar-100-python.tar.gz" and path.read_bytes() == archive.read_bytes()
    loaded = sources.load_split("cifar100-python", "test", target)
    np.testing.assert_array_equal(loaded.labels, entries["test"]["fine_labels"])


def test_download_failure_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="could not download"):
        sources.download_cifar100_python(tmp_path, url=(tmp_path / "absent.tar.gz").as_uri())


# -------------------------------------------------------------------------------------------------------- tfds


def _png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def _write_tfds_cifar100(data_dir, splits, file_format="array_record"):
    """Writes cifar100 as TFDS prepares it, without TensorFlow: the builder's own features serialize each example
    (PNG image, labels, id 'train_00005'), records are shuffled like TFDS's preparation, TFDS's ArrayRecord
    writer stores them under TFDS's file names, and tfds.folder_dataset.write_metadata adds dataset_info.json."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    features = tfds.builder("cifar100", data_dir=data_dir).info.features
    version_dir = data_dir / "cifar100" / "3.0.2"
    version_dir.mkdir(parents=True)
    split_infos = []
    for split, (images, labels) in splits.items():
        order = np.random.default_rng().permutation(len(labels))
        records = [(None, features.serialize_example({
            "id": f"{split}_{i:05d}", "image": _png(images[i]), "label": int(labels[i]),
            "coarse_label": int(labels[i]) // 5})) for i in order]
        path = version_dir / f"cifar100-{split}.{file_format}-00000-of-00001"
        if file_format == "array_record":
            file_adapters.ArrayRecordFileAdapter.write_examples(path, iter(records))
        else:
            path.write_bytes(b"records only TensorFlow reads")
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(labels)], num_bytes=0))
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, split_infos=split_infos,
                                       check_data=False)


@pytest.fixture
def cifar_splits():
    rng = np.random.default_rng()
    return {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n))
            for split, n in (("train", 9), ("test", 5))}


def test_tfds_array_record_loads_without_tensorflow_in_the_original_order(tmp_path, cifar_splits):
    pytest.importorskip("PIL", reason="TFDS decodes PNG images with Pillow (or OpenCV)")
    _write_tfds_cifar100(tmp_path, cifar_splits)
    for split, (images, labels) in cifar_splits.items():
        loaded = sources.load_split("tfds", split, tmp_path)
        np.testing.assert_array_equal(loaded.images, images)  # PNG is lossless
        np.testing.assert_array_equal(loaded.labels, labels)
        np.testing.assert_array_equal(loaded.index, np.arange(len(labels)))
        assert loaded.num_classes == 100


def test_tfds_missing_split_is_a_user_error(tmp_path, cifar_splits):
    pytest.importorskip("PIL")
    _write_tfds_cifar100(tmp_path, {"train": cifar_splits["train"]})
    with pytest.raises(UserError, match="cannot be read for split 'test'"):
        sources.load_split("tfds", "test", tmp_path)


def test_tfds_tfrecord_data_is_a_user_error(tmp_path, cifar_splits):
    pytest.importorskip("PIL")
    _write_tfds_cifar100(tmp_path, cifar_splits, file_format="tfrecord")
    with pytest.raises(UserError, match="stored as tfrecord, which only TensorFlow reads"):
        sources.load_split("tfds", "train", tmp_path)


def test_tfds_not_prepared_is_a_user_error_without_a_warning_before_it(tmp_path, caplog, capfd):
    """Before, TFDS logged "Variant folder .../cifar100/3.0.2 has no dataset_info.json" (a folder that does not
    exist) ahead of the error."""
    with pytest.raises(UserError, match="TFDS cifar100 is not prepared in"):
        sources.load_split("tfds", "train", tmp_path / "missing")
    assert not caplog.records and "dataset_info" not in "".join(capfd.readouterr())


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_tfds_preparing_without_tensorflow_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="needs tensorflow.*cifar100-python"):
        sources.load_split("tfds", "train", tmp_path, download=True)
    assert not (tmp_path / "downloads").exists()  # refused before downloading anything
