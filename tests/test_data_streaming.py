"""The streaming input path (jaxkd/data/streaming) on image folders cut from real photographs: torchvision's
transforms and ImageFolder (its real code, tests/helpers/torchvision_modules.py) as the reference, sharding,
padding, resume, worker processes, a TFDS-format copy, and one-line errors for bad data."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxkd.data.streaming import (ImageFolderSource, ImageTransforms, TfdsImageSource, make_eval_batches,
                                  make_train_iterator, sample_crop)
from jaxkd.errors import UserError
from tests.helpers.tfds_copy import write_tfds_copy
from tests.helpers.torchvision_modules import load_torchvision_module

# Small network sizes keep the loader tests fast; the parity tests use ImageNet's 224/256.
SMALL = ImageTransforms(train_size=24, eval_resize=28, eval_crop=24)
# (class, file, (height, width), format) of each split; the classes sort as torchvision sorts them: "China" first
# (upper case before lower), and one image lies in a nested folder (torchvision walks into it).
LAYOUT = {
    "train": [("beach", "a.jpg", (40, 56), "JPEG"), ("beach", "b.png", (64, 48), "PNG"),
              ("beach", "c.jpeg", (300, 220), "JPEG"), ("beach", "d.png", (33, 33), "L"),
              ("China", "x.png", (90, 160), "PNG"), ("China", "y.jpg", (120, 90), "JPEG"),
              ("China", "z.jpg", (50, 75), "JPEG"), ("China", "more/w.png", (72, 40), "PNG"),
              ("flower", "f1.jpg", (60, 60), "JPEG"), ("flower", "f2.png", (45, 100), "PNG"),
              ("flower", "f3.jpg", (257, 300), "JPEG"), ("flower", "f4.jpg", (36, 48), "JPEG"),
              ("flower", "f5.png", (80, 64), "PNG")],
    "val": [("beach", "v1.jpg", (48, 64), "JPEG"), ("beach", "v2.png", (230, 260), "PNG"),
            ("China", "v3.jpg", (70, 50), "JPEG"), ("flower", "v4.png", (40, 40), "PNG"),
            ("flower", "v5.jpg", (100, 140), "JPEG")],
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """ROOT/{train,val}/<class>/<image>: crops of scikit-learn's two sample photographs (China's temple and sky,
    a flower), rescaled to varying sizes and written as JPEG and PNG (one grayscale)."""
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(image) for image in load_sample_images().images)
    regions = {"beach": (china, (0, 0, 640, 200)), "China": (china, (100, 150, 500, 427)),
               "flower": (flower, (150, 50, 550, 427))}
    root = tmp_path_factory.mktemp("photos")
    for split, files in LAYOUT.items():
        for k, (label, name, (height, width), kind) in enumerate(files):
            photo, (left, top, right, bottom) = regions[label]
            box = (left + 7 * k, top + 5 * k, right - 3 * k, bottom - 4 * k)
            image = photo.crop(box).resize((width, height), Image.Resampling.BICUBIC)
            path = root / split / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "L":
                image.convert("L").save(path, "PNG")
            else:
                image.save(path, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return root


def _torchvision():
    return load_torchvision_module("transforms"), load_torchvision_module("transforms.functional")


def _all_batches(iterator):
    return [batch for batch in iterator]


def _assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ------------------------------------------------------------------------------------------- sources


def test_imagefolder_classes_and_examples_equal_torchvisions(photos):
    """Class indices (sorted folder names) and the examples' order and labels, nested folder included."""
    folder = load_torchvision_module("datasets.folder")
    for split in ("train", "val"):
        reference = folder.ImageFolder(str(photos / split))
        source = ImageFolderSource(photos, split)
        assert source.classes == reference.classes == ["China", "beach", "flower"]
        assert list(zip(source.paths, source.labels.tolist())) == reference.samples


# ------------------------------------------------------------------------------------------- transforms


def test_evaluation_inputs_equal_torchvisions_resize_centercrop_totensor_normalize_bit_for_bit(photos):
    """Every image of both splits through the loader's evaluation batches and `normalize` (numpy and jax), against
    torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize on the same file: equal bits, since both
    decode and resample with the same Pillow calls and compute ToTensor + Normalize in float32 in the same order."""
    import jax.numpy as jnp

    transforms, _ = _torchvision()
    folder = load_torchvision_module("datasets.folder")
    recipe = ImageTransforms()
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(recipe.mean, recipe.std)])
    for split in ("train", "val"):
        source = ImageFolderSource(photos, split)
        seen = 0
        for batch in make_eval_batches(source, recipe, batch=4):
            inputs = recipe.normalize(batch["image"])
            assert inputs.dtype == np.float32 and inputs.shape[1:] == (224, 224, 3)
            np.testing.assert_array_equal(np.asarray(recipe.normalize(jnp.asarray(batch["image"]))), inputs)
            for row in np.flatnonzero(batch["mask"]):
                expected = reference(folder.pil_loader(source.paths[batch["index"][row]])).numpy()
                np.testing.assert_array_equal(inputs[row], expected.transpose(1, 2, 0))
                seen += 1
        assert seen == len(source)


def test_evaluation_with_other_sizes_and_bicubic_equals_torchvisions(photos):
    """The config-level sizes and interpolation: Resize(20, bicubic) + CenterCrop(23), a crop larger than the
    resized image (torchvision zero-pads it, the odd pixel right/bottom), against torchvision's, bit for bit."""
    transforms, _ = _torchvision()
    folder = load_torchvision_module("datasets.folder")
    recipe = ImageTransforms(eval_resize=20, eval_crop=23, interpolation="bicubic", mean=(0.5, 0.4, 0.3),
                             std=(0.2, 0.25, 0.3))
    reference = transforms.Compose([transforms.Resize(20, transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(23), transforms.ToTensor(),
                                    transforms.Normalize(recipe.mean, recipe.std)])
    source = ImageFolderSource(photos, "val")
    for index, path in enumerate(source.paths):
        expected = reference(folder.pil_loader(path)).numpy().transpose(1, 2, 0)
        pixels = recipe.eval(source.image(index))
        assert not pixels[0].any() or not pixels[:, 0].any()  # the short side (20) was padded: 1 zero row/column
        np.testing.assert_array_equal(recipe.normalize(pixels), expected)


@pytest.mark.parametrize("crop,flip", [((10, 20, 150, 100), True), ((0, 0, 300, 220), False),
                                       ((5, 7, 224, 224), True), ((100, 30, 37, 21), False)],
                         ids=["downscale-flip", "whole", "no-resampling-flip", "upscale"])
def test_training_crop_with_given_parameters_equals_torchvisions_resized_crop_and_hflip(photos, crop, flip):
    """On the 300 x 220 JPEG: torchvision's F.resized_crop(224, bilinear) then F.hflip, pixel for pixel."""
    transforms, functional = _torchvision()
    source = ImageFolderSource(photos, "train")
    image = source.image(source.paths.index(str(photos / "train" / "beach" / "c.jpeg")))
    assert image.size == (220, 300)
    top, left, height, width = crop
    expected = functional.resized_crop(image, top, left, height, width, [224, 224],
                                       transforms.InterpolationMode.BILINEAR)
    expected = np.asarray(functional.hflip(expected) if flip else expected)
    np.testing.assert_array_equal(ImageTransforms().train_with(image, top, left, height, width, flip), expected)


@pytest.mark.parametrize("height,width", [(300, 200), (30, 300)], ids=["portrait", "wide-often-fallback"])
def test_crop_parameters_follow_torchvisions_distribution(height, width):
    """10,000 draws of `sample_crop` against 10,000 of torchvision's RandomResizedCrop.get_params (seeded):
    two-sample Kolmogorov-Smirnov on top, left, height and width each, at a family-wise false-alarm rate of 1e-3
    (Bonferroni: 2.5e-4 each; KS is conservative for these discrete values). On the wide image most draws fail
    and take the central fallback, so its share is compared too."""
    import torch
    from scipy import stats

    transforms, _ = _torchvision()
    draws = 10_000
    torch.manual_seed(0)
    image = Image.new("RGB", (width, height))
    reference = np.array([transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
                          for _ in range(draws)])
    rng = np.random.default_rng(0)
    ours = np.array([sample_crop(rng, height, width) for _ in range(draws)])
    for column, name in enumerate(("top", "left", "height", "width")):
        result = stats.ks_2samp(ours[:, column], reference[:, column])
        assert result.pvalue > 1e-3 / 4, (name, result)
    central = sample_crop(np.random.default_rng(1), height, width, scale=(2.0, 2.0))  # never fits: the fallback
    share = [np.mean(np.all(draws_ == central, axis=1)) for draws_ in (ours, reference)]
    if height == 30:
        assert share[1] > 0.3  # the fallback is exercised
    assert abs(share[0] - share[1]) < 4 * math.sqrt(2 * 0.25 / draws)  # 4 standard errors of a difference


@pytest.mark.parametrize("height,width", [(20, 400), (400, 20), (50, 60)])
def test_crop_fallback_equals_torchvisions_when_no_attempt_fits(height, width):
    """Scale (2, 2) never fits, so both take the central fallback: the same (top, left, height, width), for an
    image wider than 4/3, taller than 3/4, and in between."""
    import torch

    transforms, _ = _torchvision()
    torch.manual_seed(0)
    expected = transforms.RandomResizedCrop.get_params(Image.new("RGB", (width, height)), [2.0, 2.0], [3 / 4, 4 / 3])
    assert sample_crop(np.random.default_rng(0), height, width, scale=(2.0, 2.0)) == tuple(expected)


# ------------------------------------------------------------------------------------------- loader


def test_two_processes_read_disjoint_halves_of_the_one_process_batches(photos):
    """Each of 2 simulated processes reads half of every global batch: together exactly the one-process batches
    (the same crops too), so each epoch's examples are disjoint between them and, without drop_last, every
    example exactly once per epoch; with drop_last, each epoch a full-batch subset, a new permutation each."""
    source = ImageFolderSource(photos, "train")
    for drop_last, steps in ((False, 4), (True, 3)):
        single = _all_batches(make_train_iterator(source, SMALL, seed=3, batch=4, num_epochs=2, drop_last=drop_last))
        halves = [_all_batches(make_train_iterator(source, SMALL, seed=3, batch=4, process_index=p, process_count=2,
                                                   num_epochs=2, drop_last=drop_last)) for p in (0, 1)]
        assert len(single) == 2 * steps and all(len(half) == 2 * steps for half in halves)
        joined = [{key: np.concatenate([first[key], second[key]]) for key in first}
                  for first, second in zip(*halves)]
        _assert_same_batches(single, joined)
        epochs = []
        for epoch in range(2):
            shards = [np.concatenate([b["index"][b["mask"]] for b in half[epoch * steps:(epoch + 1) * steps]])
                      for half in halves]
            assert not set(shards[0]) & set(shards[1])
            visited = np.sort(np.concatenate(shards))
            if drop_last:
                assert len(visited) == 12 and len(set(visited)) == 12
            else:
                np.testing.assert_array_equal(visited, np.arange(len(source)))
            epochs.append(np.concatenate(shards))
            labels = np.concatenate([b["label"][b["mask"]] for half in halves for b in half[epoch * steps:
                                                                                              (epoch + 1) * steps]])
            np.testing.assert_array_equal(np.sort(labels), np.sort(source.labels[np.concatenate(shards)]))
        assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch


def test_eval_padding_and_mask_count_every_image_once_across_processes(photos):
    """5 validation images, global batch 4 over 2 processes: 2 steps on each, the last padded; the masked rows
    name every image exactly once with its label, the padding rows are zeros with index -1."""
    source = ImageFolderSource(photos, "val")
    counted, labels = [], []
    for process in (0, 1):
        batches = make_eval_batches(source, SMALL, batch=4, process_index=process, process_count=2)
        assert len(batches) == 2
        for batch in batches:
            assert batch["image"].shape == (2, 24, 24, 3)
            counted += batch["index"][batch["mask"]].tolist()
            labels += batch["label"][batch["mask"]].tolist()
            assert np.all(batch["index"][~batch["mask"]] == -1) and not batch["image"][~batch["mask"]].any()
    assert sorted(counted) == list(range(len(source)))
    assert [label for _, label in sorted(zip(counted, labels))] == source.labels.tolist()


def test_saved_iterator_state_resumes_with_the_same_batches(photos):
    """A run stopped mid-epoch 1 (step 5 of 3-step epochs) whose JSON state is restored into a new iterator, on one
    process or on two, and one started at that step, continue with the straight run's batches; a state of another
    seed is refused."""
    source = ImageFolderSource(photos, "train")
    straight = _all_batches(make_train_iterator(source, SMALL, seed=7, batch=4, num_epochs=3))
    stopped = make_train_iterator(source, SMALL, seed=7, batch=4, num_epochs=3)
    _assert_same_batches(straight[:5], [next(stopped) for _ in range(5)])
    state = json.loads(json.dumps(stopped.get_state()))
    stopped.close()
    resumed = make_train_iterator(source, SMALL, seed=7, batch=4, num_epochs=3)
    resumed.restore(state)
    _assert_same_batches(straight[5:], _all_batches(resumed))
    _assert_same_batches(straight[5:], _all_batches(make_train_iterator(source, SMALL, seed=7, batch=4,
                                                                        num_epochs=3, start_step=5)))
    halves = [make_train_iterator(source, SMALL, seed=7, batch=4, process_index=p, process_count=2, num_epochs=3)
              for p in (0, 1)]
    for half in halves:  # the position is a global step: it resumes on another number of processes too
        half.restore(state)
    _assert_same_batches(straight[5:], [{key: np.concatenate([first[key], second[key]]) for key in first}
                                        for first, second in zip(*map(_all_batches, halves))])
    other = make_train_iterator(source, SMALL, seed=8, batch=4, num_epochs=3)
    with pytest.raises(UserError, match="different batches"):
        other.restore(state)


def test_worker_processes_give_the_same_batches_and_report_a_file_truncated_after_opening(photos, tmp_path):
    """Two Grain worker processes make the in-process batches; a file cut to a truncated JPEG after the source was
    opened (check="none": its header still reads, its decode fails) stops the epoch at its step with the one error
    naming it, raised in the main process: not skipped, not a hang, not a shorter epoch. (The one test that starts
    workers: they take seconds to start.)"""
    root = shutil.copytree(photos, tmp_path / "photos")
    source = ImageFolderSource(root, "train", check="none")
    expected = _all_batches(make_train_iterator(source, SMALL, seed=5, batch=4, num_epochs=1, drop_last=False))
    last = int(expected[-1]["index"][expected[-1]["mask"]][0])  # read in the epoch's last step only
    jpeg = (root / "train" / "flower" / "f3.jpg").read_bytes()
    Path(source.paths[last]).write_bytes(jpeg[:len(jpeg) // 2])
    iterator = make_train_iterator(source, SMALL, seed=5, batch=4, num_epochs=1, drop_last=False, workers=2)
    try:
        _assert_same_batches(expected[:-1], [next(iterator) for _ in range(len(expected) - 1)])
        with pytest.raises(UserError) as error:
            next(iterator)
    finally:
        iterator.close()
    assert str(error.value).startswith(f"{source.paths[last]}: not a readable image (OSError: image file is "
                                       f"truncated"), str(error.value)


def test_data_workers_default_to_the_host_cores_0_means_threads_and_a_small_split_evaluates_in_threads(
        photos, monkeypatch, capsys):
    """data.workers -1 (the default) starts one worker process per CPU core this process may use (its affinity:
    5 cores here; without one, os.cpu_count()), said once; 0 keeps the threads; a validation split of at most
    SMALL_EVAL_SPLIT images is read in threads with any count (workers would start again on every pass). The
    worker counts the loader's Grain pipelines are built with are recorded; no worker is started."""
    import os

    from jaxkd.data.streaming import loader
    from jaxkd.data.streaming.run_data import StreamingData
    from jaxkd.data.streaming.workers import SMALL_EVAL_SPLIT

    built, real_pipeline = [], loader._iter_dataset

    def pipeline(examples, start_step, workers, threads):
        built.append(workers)
        if workers:
            raise StopIteration  # recorded, not started
        return real_pipeline(examples, start_step, workers, threads)

    monkeypatch.setattr(loader, "_iter_dataset", pipeline)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 4, 6, 7}, raising=False)
    config = _folder_config(photos, image_size=24, eval_resize=28, eval_crop=24)
    config.batch_size = 4
    assert config.data.workers == -1
    data = StreamingData.from_config(config)
    assert capsys.readouterr().out == (f"data: 5 worker processes (data.workers=-1: the host's cores); evaluation of "
                                       f"5 images in threads (a split of at most {SMALL_EVAL_SPLIT}: starting "
                                       f"workers would take longer)\n")
    assert len(data.test) == 5 <= SMALL_EVAL_SPLIT
    assert list(data.train_iterator(config, 0, 1, start_step=0)) == [] and built == [5]
    assert sum(int(batch["mask"].sum()) for batch in data.eval_batches(4, 0, 1)) == 5 and built == [5, 0]
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert StreamingData.from_config(config).workers == 3
    config.data.workers = 0
    data = StreamingData.from_config(config)
    assert data.workers == 0 and capsys.readouterr().out.endswith(
        "data: threads of this process; evaluation of 5 images in them too\n")
    with data.train_iterator(config, 0, 1, start_step=0) as batches:
        assert int(next(batches)["mask"].sum()) == 4 and built == [5, 0, 0]


def test_a_tfds_format_image_dataset_gives_the_image_folders_batches(photos, tmp_path):
    """The same files stored as a TFDS dataset (records in the folder's order, the validation images as split
    "test") read through TfdsImageSource: the same classes, training batches and evaluation batches as the
    ImageFolder; data.eval_split names "test" for a run (its default "validation" is absent: one line); with
    skip_unreadable a record that is no image is left out, the others keep their records and labels."""
    from jaxkd.data.streaming.run_data import StreamingData

    write_tfds_copy(tmp_path, photos, {"train": "train", "test": "val", "damaged": "val"}, broken={"damaged": 2})
    for folder_split, tfds_split in (("train", "train"), ("val", "test")):
        folder, tfds_source = ImageFolderSource(photos, folder_split), TfdsImageSource("photo_classes", tfds_split,
                                                                                       tmp_path, check="quick")
        assert tfds_source.classes == folder.classes and tfds_source.num_classes == 3
        assert len(tfds_source) == len(folder)
        _assert_same_batches(_all_batches(make_eval_batches(folder, SMALL, batch=4)),
                             _all_batches(make_eval_batches(tfds_source, SMALL, batch=4)))
    folder, tfds_source = ImageFolderSource(photos, "train"), TfdsImageSource("photo_classes", "train", tmp_path)
    _assert_same_batches(_all_batches(make_train_iterator(folder, SMALL, seed=1, batch=4, num_epochs=2)),
                         _all_batches(make_train_iterator(tfds_source, SMALL, seed=1, batch=4, num_epochs=2)))
    with pytest.raises(UserError, match="TFDS no_such_dataset is not prepared in"):
        TfdsImageSource("no_such_dataset", "train", tmp_path)
    config = _folder_config(tmp_path, source="tfds_images", tfds_name="photo_classes")
    with pytest.raises(UserError, match="cannot be read for split 'validation'"):
        StreamingData.from_config(config)
    config.data.eval_split = "test"
    data = StreamingData.from_config(config)
    assert (data.train.split, len(data.train), data.test.split, len(data.test)) == ("train", 13, "test", 5)
    val, damaged = ImageFolderSource(photos, "val"), TfdsImageSource("photo_classes", "damaged", tmp_path,
                                                                     skip_unreadable=True)
    assert list(damaged.skipped) == ["TFDS photo_classes damaged[2]"] and len(damaged) == 4
    for index, kept in enumerate([0, 1, 3, 4]):
        assert damaged.name(index) == f"TFDS photo_classes damaged[{kept}]"
        assert damaged.label(index) == val.label(kept)
        np.testing.assert_array_equal(np.asarray(damaged.image(index)), np.asarray(val.image(kept)))


# ------------------------------------------------------------------------------------------- bad data


def _small_tree(photos, root):
    """ROOT/{train,val}/<class>/ with one image per class of the photos."""
    for split in ("train", "val"):
        for label in ("China", "beach", "flower"):
            source = next((photos / split / label).glob("*.*"))
            (root / split / label).mkdir(parents=True)
            shutil.copy(source, root / split / label / source.name)
    return root


def _break_missing_folder(root):
    return "train", root / "nothing_here", root / "nothing_here" / "train"


def _break_empty_class(root):
    (root / "train" / "zebra").mkdir()
    return "train", root, root / "train" / "zebra"


def _break_not_an_image(root):
    (root / "train" / "beach" / "notes.txt").write_text("photos from the trip")
    return "train", root, root / "train" / "beach" / "notes.txt"


def _break_truncated_jpeg(root):
    path = next((root / "train" / "flower").glob("*.jpg"))
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return "train", root, path


def _break_validation_class_not_in_training(root):
    shutil.copytree(root / "val" / "beach", root / "val" / "unicorn")
    return "val", root, root / "val" / "unicorn"


@pytest.mark.parametrize("damage", [_break_missing_folder, _break_empty_class, _break_not_an_image,
                                    _break_truncated_jpeg, _break_validation_class_not_in_training],
                         ids=lambda damage: damage.__name__.removeprefix("_break_"))
def test_bad_data_is_one_line_naming_it_when_the_source_opens(photos, tmp_path, damage):
    """Each mistake is one UserError line that names the file or folder, raised when the source is opened (before
    any batch is made or anything compiled)."""
    split, root, named = damage(_small_tree(photos, tmp_path / "data"))
    with pytest.raises(UserError) as error:
        ImageFolderSource(root, split)
    message = str(error.value)
    assert "\n" not in message and str(named) in message, message


@pytest.mark.parametrize("damage,why", [(_break_truncated_jpeg, "OSError: image file is truncated"),
                                        (_break_not_an_image, "UnidentifiedImageError")],
                         ids=["truncated_jpeg", "not_an_image"])
def test_a_bad_file_found_while_reading_is_the_error_naming_it(photos, tmp_path, damage, why):
    """With the open-time check off, the read itself refuses the file in this process's reading threads (Pillow's
    "image file is truncated", or no image at all), naming it: an epoch is never silently shorter."""
    _, _, path = damage(_small_tree(photos, tmp_path / "data"))
    source = ImageFolderSource(tmp_path / "data", "train", check="none")
    with pytest.raises(UserError) as error:
        _all_batches(make_eval_batches(source, SMALL, batch=3))
    assert str(error.value).startswith(f"{path}: not a readable image ({why}") and "\n" not in str(error.value)


def _folder_config(root, **data):
    """The default config on the image folder `root`, with `data` settings."""
    from jaxkd.config.default import get_config

    config = get_config()
    config.data.source, config.data.data_dir = "imagefolder", str(root)
    config.data.update(data)
    return config


def test_a_validation_split_without_some_training_classes_keeps_the_training_indices(photos, tmp_path, capsys):
    """val/ without the training class "China" (index 0): the labels stay the training classes' indices, equal to
    torchvision's `make_dataset(val, train's class_to_idx, allow_empty=True)` (without allow_empty torchvision
    refuses the split; `ImageFolder(val)` alone would renumber "beach" 0 and "flower" 1, every label shifted), and
    the run says so once."""
    from jaxkd.data.streaming.run_data import StreamingData

    folder = load_torchvision_module("datasets.folder")
    root = _small_tree(photos, tmp_path / "data")
    shutil.rmtree(root / "val" / "China")
    class_to_idx = folder.ImageFolder(str(root / "train")).class_to_idx
    expected = folder.make_dataset(str(root / "val"), class_to_idx, folder.IMG_EXTENSIONS, allow_empty=True)
    source = ImageFolderSource(root, "val")
    assert source.classes == ["China", "beach", "flower"] and source.missing_classes == ["China"]
    assert list(zip(source.paths, source.labels.tolist())) == expected and sorted(source.labels) == [1, 2]
    assert folder.ImageFolder(str(root / "val")).class_to_idx == {"beach": 0, "flower": 1}
    StreamingData.from_config(_folder_config(root))
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: the val split has no folder for 1 of the 3 training classes (China)")
    assert "\n" not in warning


def test_skip_unreadable_leaves_out_the_files_the_check_refuses_and_lists_them(photos, tmp_path, capsys):
    """data.skip_unreadable on the photos with a truncated JPEG and a text file in train/ and a text file in val/:
    the splits are torchvision's ImageFolder samples less those files (in its order; torchvision itself drops a
    .txt by its extension, but keeps the truncated JPEG until its read fails), the epoch's length without them,
    one warning line, the workdir's list; a resume that finds other files unreadable is one line; a class whose
    every file is unreadable is one line naming its folder."""
    from jaxkd.data.streaming.run_data import SKIPPED_FILES, StreamingData

    folder = load_torchvision_module("datasets.folder")
    root = shutil.copytree(photos, tmp_path / "photos")
    truncated, text, val_text = (root / "train" / "flower" / "f3.jpg", root / "train" / "beach" / "notes.txt",
                                 root / "val" / "China" / "notes.txt")
    truncated.write_bytes(truncated.read_bytes()[:4000])
    text.write_text("photos from the trip")
    val_text.write_text("more notes")
    data = StreamingData.from_config(_folder_config(root, skip_unreadable=True))
    warning = capsys.readouterr().err.strip()
    for split, source, bad in (("train", data.train, [str(text), str(truncated)]), ("val", data.test, [str(val_text)])):
        expected = [sample for sample in folder.ImageFolder(str(root / split)).samples if sample[0] not in bad]
        assert list(zip(source.paths, source.labels.tolist())) == expected
        assert list(source.skipped) == bad
    epoch = _all_batches(make_train_iterator(data.train, SMALL, seed=0, batch=4, num_epochs=1, drop_last=False))
    assert len(data.train) == 12 and len(epoch) == 3  # 14 files, 2 skipped: 3 full batches
    assert sorted(np.concatenate([batch["index"][batch["mask"]] for batch in epoch])) == list(range(12))
    assert data.skipped[str(truncated)].startswith("truncated JPEG")
    assert warning.startswith("warning: data.skip_unreadable: 2 training and 1 validation file(s) skipped as "
                              f"unreadable: {text}, {truncated}, {val_text}") and "\n" not in warning
    workdir = tmp_path / "run"
    workdir.mkdir()
    data.check_skipped_list(workdir)  # a new run: nothing to compare with
    data.write_skipped_list(workdir)
    lines = (workdir / SKIPPED_FILES).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(text), str(truncated), str(val_text)]
    data.check_skipped_list(workdir)  # the same files on resume
    (root / "train" / "China" / "y.jpg").write_bytes(b"")
    resumed = StreamingData.from_config(_folder_config(root, skip_unreadable=True))
    with pytest.raises(UserError) as error:
        resumed.check_skipped_list(workdir)
    assert str(root / "train" / "China" / "y.jpg") in str(error.value) and "\n" not in str(error.value)
    for name in ("a.jpg", "b.png", "c.jpeg", "d.png"):
        (root / "train" / "beach" / name).write_text("gone")
    with pytest.raises(UserError, match=f"^{root / 'train' / 'beach'}: every file of this class folder is "
                                        f"unreadable"):
        ImageFolderSource(root, "train", skip_unreadable=True)


def test_imagefolder_on_gs_reads_the_same_examples_and_names_a_missing_folder(photos, gcs):
    """The val split uploaded to the session's GCS server: the same labels and evaluation batches as on disk; a
    prefix that holds nothing is one line naming it."""
    for split in ("train", "val"):
        for path in (photos / split).rglob("*.*"):
            gcs.upload("runs", f"images/{path.relative_to(photos)}", path.read_bytes())
    local, remote = ImageFolderSource(photos, "val"), ImageFolderSource("gs://runs/images", "val")
    assert remote.classes == local.classes and remote.labels.tolist() == local.labels.tolist()
    assert [path.removeprefix("gs://runs/images/") for path in remote.paths] == \
        [path.removeprefix(f"{photos}/") for path in local.paths]
    _assert_same_batches(_all_batches(make_eval_batches(local, SMALL, batch=4)),
                         _all_batches(make_eval_batches(remote, SMALL, batch=4)))
    with pytest.raises(UserError, match="gs://runs/no_images/train: no such folder"):
        ImageFolderSource("gs://runs/no_images", "train")
