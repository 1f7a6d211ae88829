"""Training from the streaming path (data.source "imagefolder") end to end on a small image folder cut from real
photographs: a run learns, SIGTERM mid-epoch then resume is bitwise the straight run, and bad data is one line
before anything compiles."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import demo
from jaxkd.data.streaming import ImageFolderSource
from jaxkd.engine import loop
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.setup import build
from jaxkd.errors import UserError
from tests.helpers.assertions import assert_bitwise_equal
from tests.helpers.runs import final_params, on_digits, stop_during_call
from tests.helpers.tfds_copy import write_tfds_copy

# (class, photograph, region (left, top, right, bottom)) of scikit-learn's two sample photographs
CLASSES = [("flower", 1, (150, 50, 550, 427)), ("sky", 0, (0, 0, 640, 120)), ("temple", 0, (150, 150, 500, 427))]
TRAIN_PER_CLASS, VAL_PER_CLASS = 16, 5  # 48 training images: 6 steps of 8; 15 validation: 2 batches of 8, padded
EPOCHS, STEPS_PER_EPOCH = 3, 6


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """ROOT/{train,val}/<class>/<image>: random crops of three regions of the sample photographs (a flower, the
    sky, the temple), rescaled to 32-64 px and written as JPEG and PNG."""
    from sklearn.datasets import load_sample_images

    photographs = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("photos")
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name, photo, (left, top, right, bottom) in CLASSES:
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                width, height = rng.integers(60, 120, size=2)
                x, y = rng.integers(left, right - width), rng.integers(top, bottom - height)
                crop = photographs[photo].crop((x, y, x + width, y + height))
                crop = crop.resize(tuple(int(s) for s in rng.integers(32, 65, size=2)), Image.Resampling.BICUBIC)
                crop.save(root / split / name / (f"{k}.png" if k % 2 else f"{k}.jpg"))
    return root


def streaming_config(data_dir, epochs=EPOCHS):
    """resnet8 on the image folder at 32 px, batch 8: a small host-fed run."""
    config = on_digits(demo.get_config("teacher"), epochs=epochs, log_every_steps=4)
    config.data.source = "imagefolder"
    config.data.data_dir = str(data_dir)
    config.data.normalization = "imagenet"
    config.data.image_size, config.data.eval_resize, config.data.eval_crop = 32, 36, 32
    config.batch_size = config.eval_batch_size = 8
    config.optimizer.lr, config.optimizer.lr_decay_epochs = 0.02, ()
    return config


@pytest.fixture(scope="module")
def straight_run(photos, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, train_and_evaluate(streaming_config(photos), workdir)


def rows(workdir, kind):
    return [row for row in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())
            if row["kind"] == kind]


def test_a_run_on_an_image_folder_learns_and_evaluates_every_validation_image(straight_run):
    workdir, result = straight_run
    assert result["step"] == EPOCHS * STEPS_PER_EPOCH
    evaluations = rows(workdir, "eval")
    assert [row["epoch"] for row in evaluations] == list(range(1, EPOCHS + 1))
    assert result["last_top1"] > 55.0, result  # three classes: chance is 33.3 (66.7 on this machine)
    # 15 validation images counted once each: accuracies are multiples of 1/15
    assert all(abs(row["top1"] * 15 / 100 - round(row["top1"] * 15 / 100)) < 1e-6 for row in evaluations)


def test_sigterm_mid_epoch_then_resume_is_the_straight_run_bitwise(straight_run, photos, tmp_path, monkeypatch):
    """Stopped during epoch 2's third step (call 9): the checkpoint holds the loader's position; the resumed run
    reads the batches the straight run read and ends with its weights, bit for bit."""
    stop_during_call(monkeypatch, 9)
    with pytest.raises(SystemExit) as stopped:
        train_and_evaluate(streaming_config(photos), tmp_path)
    assert stopped.value.code == 143
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [STEPS_PER_EPOCH, 9]
    progress = json.loads((tmp_path / "checkpoints" / "9" / "progress" / "metadata").read_text())
    assert progress["loader"]["step"] == 9
    monkeypatch.undo()
    result = train_and_evaluate(streaming_config(photos), tmp_path)
    assert result == straight_run[1]
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))
    assert rows(tmp_path, "eval") == rows(straight_run[0], "eval")


def without_throughput(rows_of_a_kind):
    return [{key: value for key, value in row.items() if key != "images_per_s"} for row in rows_of_a_kind]


def test_a_tfds_format_copy_of_the_folder_trains_through_the_same_path(straight_run, photos, tmp_path):
    """The folder stored as a TFDS image-classification dataset (TFDS's on-disk format, records in the folder's
    order), trained by name (data.source "tfds_images"): its first epoch is the folder's, metric for metric."""
    write_tfds_copy(tmp_path / "tfds", photos, {"train": "train", "val": "validation"})
    config = streaming_config(tmp_path / "tfds", epochs=1)
    config.data.source, config.data.tfds_name = "tfds_images", "photo_classes"
    result = train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == STEPS_PER_EPOCH
    # every label, for a method's per-class tables (CRD's), read from the records only when asked for
    assert np.array_equal(np.asarray(build(config).train_labels), ImageFolderSource(photos, "train").labels)
    for kind in ("train", "eval"):
        expected = [row for row in rows(straight_run[0], kind) if row["step"] <= STEPS_PER_EPOCH]
        assert without_throughput(rows(tmp_path / "run", kind)) == without_throughput(expected)


def _missing_folder(root):
    shutil.rmtree(root / "val")
    return root / "val"


def _empty_class(root):
    shutil.rmtree(root / "train" / "sky")
    (root / "train" / "sky").mkdir()
    return root / "train" / "sky"


def _not_an_image(root):
    path = root / "train" / "flower" / "notes.jpg"
    path.write_text("not an image")
    return path


@pytest.mark.parametrize("damage", [_missing_folder, _empty_class, _not_an_image])
def test_bad_data_is_one_line_naming_it_before_anything_compiles(photos, tmp_path, monkeypatch, damage):
    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    named = damage(root)
    monkeypatch.setattr(loop, "create_train_state", lambda setup: pytest.fail("compiled before the data check"))
    with pytest.raises(UserError) as error:
        train_and_evaluate(streaming_config(root), tmp_path / "run")
    assert str(named) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
