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
from jaxkd.tools import evaluate
from tests.helpers.assertions import assert_bitwise_equal, assert_one_line_error
from tests.helpers.photo_folder import write_photo_folder
from tests.helpers.processes import finish, launch
from tests.helpers.runs import final_params, on_digits, stop_during_call
from tests.helpers.tfds_copy import write_tfds_copy

EPOCHS, STEPS_PER_EPOCH = 3, 6  # 48 training images (tests/helpers/photo_folder.py) in steps of 8


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


def streaming_config(data_dir, epochs=EPOCHS):
    """resnet8 on the image folder at 32 px, batch 8: a small host-fed run."""
    config = on_digits(demo.get_config("teacher"), epochs=epochs, log_every_steps=4)
    config.data.source, config.data.digits_size = "imagefolder", 32  # digits' size back to its default
    config.data.data_dir = str(data_dir)
    config.data.normalization = "imagenet"
    config.data.image_size, config.data.eval_resize, config.data.eval_crop = 32, 36, 32
    config.data.workers = 0  # threads: worker processes take seconds to start (the same batches: test_data_streaming)
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


def test_two_processes_of_two_devices_train_on_the_folder_like_one_device(straight_run, photos, tmp_path):
    """`python -m jaxkd.train` on 2 processes x 2 simulated devices, one epoch: each process reads its half of
    every global batch (make_array_from_process_local_data), so the run follows the one-device run's first epoch
    (the union of the shards is each batch: a missing or repeated example would change the loss by far more than
    the reductions' order does), and the evaluation counts the 15 validation images once, as one device does."""
    command = ["--config", "configs/demo.py:teacher", "--workdir", tmp_path / "run", "--config.model=resnet8",
               "--config.data.source=imagefolder", f"--config.data.data_dir={photos}",
               "--config.data.normalization=imagenet", "--config.data.image_size=32", "--config.data.eval_resize=36",
               "--config.data.eval_crop=32", "--config.data.workers=0", "--config.batch_size=8",
               "--config.eval_batch_size=8", "--config.optimizer.lr=0.02", "--config.optimizer.lr_decay_epochs=()",
               "--config.epochs=1", "--config.log_every_steps=4",
               "--config.progress_bar=False"]  # streaming_config's run, epoch 1
    results = finish(launch("jaxkd.train", *command, processes=2, devices_per_process=2))
    assert [code for code, _, _ in results] == [0, 0], [stderr[-3000:] for _, _, stderr in results]
    workdir, _ = straight_run
    ours, reference = ({kind: [row for row in rows(run, kind) if row["step"] <= STEPS_PER_EPOCH]
                        for kind in ("train", "eval")} for run in (tmp_path / "run", workdir))
    assert [row["top1"] for row in ours["eval"]] == [row["top1"] for row in reference["eval"]] and ours["eval"]
    assert [row["step"] for row in ours["train"]] == [row["step"] for row in reference["train"]] == [4, 6]
    # measured: 3e-5 apart after epoch 1 (1e-3 after epoch 3)
    np.testing.assert_allclose([row["loss"] for row in ours["train"]], [row["loss"] for row in reference["train"]],
                               rtol=1e-4)


def test_a_tfds_format_copy_of_the_folder_trains_through_the_same_path(straight_run, photos, tmp_path):
    """The folder stored as a TFDS image-classification dataset (TFDS's on-disk format, records in the folder's
    order), trained by name (data.source "tfds_images"): its first epoch is the folder's, metric for metric."""

    write_tfds_copy(tmp_path / "tfds", photos, {"train": "train", "validation": "val"})
    config = streaming_config(tmp_path / "tfds", epochs=1)
    config.data.source, config.data.tfds_name = "tfds_images", "photo_classes"
    result = train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == STEPS_PER_EPOCH
    # every label, for a method's per-class tables (CRD's), read from the records only when asked for
    assert np.array_equal(np.asarray(build(config).train_labels), ImageFolderSource(photos, "train").labels)
    for kind in ("train", "eval"):
        expected = [row for row in rows(straight_run[0], kind) if row["step"] <= STEPS_PER_EPOCH]
        assert without_throughput(rows(tmp_path / "run", kind)) == without_throughput(expected)


def _val_inputs(data_dir):
    """(paths, float NCHW batch) of data_dir/val by torchvision's ImageFolder + Resize(36) + CenterCrop(32) +
    ToTensor + Normalize (ImageNet's mean/std)."""
    import torch

    from jaxkd.data.streaming import IMAGENET_MEAN, IMAGENET_STD
    from tests.helpers.torchvision_modules import load_torchvision_module

    transforms, folder = load_torchvision_module("transforms"), load_torchvision_module("datasets.folder")
    preprocess = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(),
                                     transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = folder.ImageFolder(str(data_dir / "val"), transform=preprocess, loader=folder.pil_loader)
    return [path for path, _ in dataset.samples], torch.stack([image for image, _ in dataset])


def _predictions(torch_model, inputs) -> list[int]:
    import torch

    torch_model.eval()
    with torch.no_grad():
        return torch_model(inputs)[1].argmax(1).tolist()  # the seed's models return (features, logits)


def _run_evaluate(checkpoint, data_dir, out, *source) -> dict:
    """The JSON of `python -m jaxkd.evaluate` on CHECKPOINT (default source: the image folder `data_dir`)."""
    source = source or ("--source=imagefolder",)
    assert evaluate.main([f"--checkpoint={checkpoint}", *source, f"--data-dir={data_dir}", "--eval-resize=36",
                          "--eval-crop=32", "--batch-size=4", "--quiet", f"--out={out}"]) == 0
    return json.loads(Path(out).read_text())


def test_evaluate_command_on_an_image_folder_predicts_as_pytorch_and_torchvision(straight_run, photos, tmp_path,
                                                                                  capsys):
    """`python -m jaxkd.evaluate --source imagefolder`, the 15 validation images once each in batches of 4 (the
    last padded and masked), against PyTorch on torchvision's transforms: a random 100-class resnet8 .pth
    (ImageNet's normalization, the default for a .pth on these sources; its logits near ties, so any other
    pixel moves predictions) on a copy of the images filed under the class PyTorch predicts for each, where top-1
    is 100% exactly when every prediction is PyTorch's; and the run's workdir (its metadata's normalization) on
    the folder itself and on its TFDS copy (--source tfds_images), the same top-1 hits as PyTorch with its
    student.pth. A missing split is one error line."""
    import torch

    from jaxkd.pytorch.torch_models import get_torch_model
    from tests.helpers.evaluation_files import spread_model

    paths, inputs = _val_inputs(photos)
    crops = np.stack([np.asarray(Image.open(path).convert("RGB").resize((32, 32))) for path in paths])
    random_model = spread_model(100, seed=1, images_uint8=crops)
    predictions = _predictions(random_model, inputs)
    assert len(set(predictions)) > 5, predictions  # spread: a collapsed model would prove little
    torch.save(random_model.state_dict(), tmp_path / "random.pth")
    relabelled = tmp_path / "relabelled"
    for name in (f"class{c:03d}" for c in range(100)):
        (relabelled / "train" / name).mkdir(parents=True)  # the class indices: folder names only are read
    for k, (path, predicted) in enumerate(zip(paths, predictions)):
        (relabelled / "val" / f"class{predicted:03d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, relabelled / "val" / f"class{predicted:03d}" / f"{k}{Path(path).suffix}")
    results = _run_evaluate(tmp_path / "random.pth", relabelled, tmp_path / "random.json")
    assert results["normalization"] == "imagenet"
    assert [results["clean"][key] for key in ("correct1", "correct5", "count")] == [15, 15, 15], results["clean"]

    workdir = straight_run[0]
    student = get_torch_model("resnet8", 3)
    student.load_state_dict(torch.load(workdir / "student.pth"))
    labels = [["flower", "sky", "temple"].index(Path(path).parent.name) for path in paths]
    hits = sum(predicted == label for predicted, label in zip(_predictions(student, inputs), labels))
    results = _run_evaluate(workdir, photos, tmp_path / "workdir.json")
    assert (results["clean"]["correct1"], results["clean"]["count"]) == (hits, 15)
    write_tfds_copy(tmp_path / "tfds", photos, {"validation": "val"})
    results = _run_evaluate(workdir, tmp_path / "tfds", tmp_path / "tfds.json", "--source=tfds_images",
                            "--tfds-name=photo_classes")
    assert (results["clean"]["correct1"], results["clean"]["count"]) == (hits, 15)
    capsys.readouterr()
    code = evaluate.main([f"--checkpoint={workdir}", "--source=imagefolder", f"--data-dir={photos}", "--split=test"])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, f"{photos / 'test'}: no such folder")


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


def _truncated_jpeg(root):
    path = root / "train" / "flower" / "0.jpg"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _validation_class_training_lacks(root):
    shutil.copytree(root / "val" / "sky", root / "val" / "clouds")
    return root / "val" / "clouds"


@pytest.mark.parametrize("damage", [_missing_folder, _empty_class, _not_an_image, _truncated_jpeg,
                                    _validation_class_training_lacks])
def test_bad_data_is_one_line_naming_it_before_anything_compiles(photos, tmp_path, monkeypatch, damage):
    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    named = damage(root)
    monkeypatch.setattr(loop, "create_train_state", lambda setup: pytest.fail("compiled before the data check"))
    with pytest.raises(UserError) as error:
        train_and_evaluate(streaming_config(root), tmp_path / "run")
    assert str(named) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_skip_unreadable_resumes_only_on_the_files_its_start_skipped(photos, tmp_path, monkeypatch):
    """data.skip_unreadable: a workdir whose skipped_files.txt (written when its run started) names other files
    than the check finds now is one line naming the difference, before anything compiles."""
    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    unreadable = _not_an_image(root)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "skipped_files.txt").write_text(f"{root / 'train' / 'sky' / '3.png'}\tnot a readable image\n")
    monkeypatch.setattr(loop, "create_train_state", lambda setup: pytest.fail("compiled before the data check"))
    config = streaming_config(root)
    config.data.skip_unreadable = True
    with pytest.raises(UserError) as error:
        train_and_evaluate(config, workdir)
    assert str(error.value).startswith(f"{workdir / 'skipped_files.txt'}: the run started without the 1 file(s)")
    assert str(unreadable) in str(error.value) and "\n" not in str(error.value)
