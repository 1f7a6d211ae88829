"""A torchvision-format teacher file end to end (issue 30): torchvision's own ResNet-18 (its real model code,
tests/helpers/torchvision_modules.py) saved as `model.state_dict()` under the name torchvision caches ResNet-18's
weights under, named as `teacher.checkpoint` with no architecture, teaches a resnet8 by KD + FitNets (whose
regressor is sized from the pair: resnet8's second stage, 32 channels at 16x16, onto ResNet-18's, 128 at 4x4) on a
3-class folder of photographs through the streaming path, with configs/imagenet.py's KD recipe. The teacher's
logged top-1 is torchvision's own count with its eval transforms; the student's final top-1 is PyTorch's count of
the exported file, loaded strictly into the seed's model code. Small on purpose: one epoch at 32 px (measured on
this CPU: ReviewKD on MobileNetV1, the ImageNet pair's student, costs 3x the CPU time of this run, CRD 1.5x)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.__main__ import main as convert_main
from jaxkd.config import recipes
from jaxkd.engine import loop
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.errors import UserError
from jaxkd.io.model_reference import open_model
from jaxkd.methods import config_section
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.photo_folder import CLASSES, VAL_PER_CLASS, write_photo_folder
from tests.helpers.torchvision_modules import load_torchvision_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEACHER_FILE = recipes.TORCHVISION_FILES["tv_resnet18"]  # resnet18-f37072fd.pth
SIZE, EVAL_RESIZE = 32, 36  # RandomResizedCrop 32; Resize 36 + CenterCrop 32 (ImageNet's 224, 256, 224 scaled)
STEPS = 6  # one epoch: 48 training images at batch 8
VAL_IMAGES = VAL_PER_CLASS * len(CLASSES)
# ToTensor + Normalize constants (torchvision's ImageNet ones; the seed's CIFAR-100 ones, as jaxkd's default)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SEED = ((129.3 / 255, 124.07 / 255, 112.43 / 255), (68.17 / 255, 65.39 / 255, 70.42 / 255))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


def torchvision_inputs(root: Path, split: str, normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """(images NCHW, labels) of `root/split` through torchvision's ImageFolder and eval transforms: Resize +
    CenterCrop + ToTensor + Normalize with `normalization` = (mean, std)."""
    transforms, folder = load_torchvision_module("transforms"), load_torchvision_module("datasets.folder")
    transform = transforms.Compose([transforms.Resize(EVAL_RESIZE), transforms.CenterCrop(SIZE),
                                    transforms.ToTensor(), transforms.Normalize(*normalization)])
    dataset = folder.ImageFolder(str(root / split), transform=transform, loader=folder.pil_loader)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), torch.tensor(dataset.targets)


@pytest.fixture(scope="module")
def teacher(photos, tmp_path_factory):
    """(the file, torchvision's model): `resnet18(num_classes=3)` made a teacher in a second, not trained:
    torchvision's random init (seed 0), its BN statistics those of the training photos (one train-mode pass,
    cumulative average) and its classifier fitted to their pooled features by ridge regression (73% val top-1,
    chance 33%). Saved as torchvision saves weights: a bare `state_dict()`."""
    torch.manual_seed(0)
    model = load_torchvision_module("models.resnet").resnet18(num_classes=len(CLASSES))
    images, labels = torchvision_inputs(photos, "train", IMAGENET)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the mean over the passes
    classifier, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        model.train()(images)
        features = model.eval()(images)
        mean = features.mean(0)
        targets = torch.nn.functional.one_hot(labels, len(CLASSES)).float() - 1 / len(CLASSES)
        centered = features - mean
        weight = torch.linalg.solve(centered.T @ centered + 10 * torch.eye(features.shape[1]), centered.T @ targets)
        classifier.weight.copy_(10 * weight.T)  # x10: logits of a few units, a KD target that is not flat
        classifier.bias.copy_(-10 * mean @ weight)
    model.fc = classifier
    path = tmp_path_factory.mktemp("torch") / "hub" / "checkpoints" / TEACHER_FILE  # torch.hub's cache, as torchvision
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return path, model


def top1_count(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(images).argmax(1) == labels).sum())


def distillation_config(photos, teacher_file):
    """configs/imagenet.py's KD recipe for tv_resnet18 -> resnet8 on the photo folder (CE 0.5, KD 0.5, T 1), with
    FitNets' hint beside it (RepDistiller's weight 100, the second stage); the teacher the file (no arch), 32 px,
    batch 8 (lr 0.2 x 8 / 512), one epoch."""
    config = recipes.imagenet("tv_resnet18", "resnet8", "kd")
    config.method, config.loss.beta, config.fitnet = "fitnet", 100.0, config_section("fitnet", hint_layer=1)
    config.data.source, config.data.data_dir, config.data.tfds_name = "imagefolder", str(photos), ""
    config.data.image_size, config.data.eval_resize, config.data.eval_crop = SIZE, EVAL_RESIZE, SIZE
    config.data.workers = 0  # threads: worker processes take seconds to start
    config.teacher.checkpoint, config.teacher.arch = str(teacher_file), ""
    config.batch_size = config.eval_batch_size = 8
    config.epochs = config.eval_every_epochs = config.checkpoint_every_epochs = 1
    config.log_every_steps, config.progress_bar = 3, False
    return config


@pytest.fixture(scope="module")
def distilled(photos, teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train_and_evaluate(distillation_config(photos, teacher[0]), workdir)


def rows(workdir, kind):
    return [row for row in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())
            if row["kind"] == kind]


def test_a_torchvision_file_opens_without_arch_as_an_imagenet_normalized_tv_resnet18(teacher):
    opened = open_model(teacher[0])
    assert (opened.arch, opened.num_classes, opened.normalization) == ("tv_resnet18", len(CLASSES), "imagenet")


def test_the_teachers_logged_top1_is_torchvisions_own_count_on_the_val_images(distilled, photos, teacher):
    """The count with the ImageNet constants (11 of 15 here); the seed's constants give another count, so the
    equality also sees which normalization the run gave the teacher."""
    workdir, _ = distilled
    [logged] = rows(workdir, "teacher")
    count = top1_count(teacher[1], *torchvision_inputs(photos, "val", IMAGENET))
    assert logged["top1"] == pytest.approx(100 * count / VAL_IMAGES)
    assert count > VAL_IMAGES / len(CLASSES)  # better than chance: a teacher worth distilling
    assert top1_count(teacher[1], *torchvision_inputs(photos, "val", SEED)) != count


def test_the_student_trains_by_kd_and_fitnets_and_exports_for_the_seeds_model(distilled, photos, tmp_path):
    """Both terms reach the loss; the exported student loads strictly into the seed's PyTorch ResNet
    (jaxkd/pytorch/torch_models.py) and PyTorch counts the run's final top-1 with it (images whose two best
    logits nearly tie may go either way between the frameworks)."""
    workdir, result = distilled
    assert result["step"] == STEPS
    trained = rows(workdir, "train")
    assert trained and all(row["kd"] > 0 and row["term"] > 0 for row in trained), trained
    state = json.loads((workdir / "config.json").read_text())
    assert state["teacher"]["arch"] == "" and state["data"]["normalization"] == "imagenet"

    exported = tmp_path / "student.pth"
    assert convert_main(["export", str(workdir), "--out", str(exported)]) == 0
    student = get_torch_model("resnet8", len(CLASSES))
    student.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    images, labels = torchvision_inputs(photos, "val", IMAGENET)
    with torch.no_grad():
        logits = student.eval()(images)[1].numpy()  # the seed's forward: (features, logits)
    best_two = np.sort(logits, axis=1)[:, -2:]
    near_ties = int(np.sum(best_two[:, 1] - best_two[:, 0] <= 1e-4 * np.abs(logits).max()))
    count = int(np.sum(logits.argmax(1) == labels.numpy()))
    assert abs(result["last_top1"] * VAL_IMAGES / 100 - count) <= near_ties + 1e-6, (result, count, near_ties)


def test_a_torchvision_teacher_in_a_run_normalized_otherwise_is_one_line_before_anything_compiles(
        photos, teacher, tmp_path, monkeypatch):
    config = distillation_config(photos, teacher[0])
    config.data.normalization = "pytorch_kd"
    monkeypatch.setattr(loop, "create_train_state", lambda setup: pytest.fail("compiled before the check"))
    with pytest.raises(UserError) as error:
        train_and_evaluate(config, tmp_path / "run")
    message = str(error.value)
    assert "imagenet" in message and "--config.data.normalization=imagenet" in message and "\n" not in message
    assert not (tmp_path / "run").exists()
