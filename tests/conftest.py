"""Shared test helpers: randomized PyTorch reference models and layout conversions."""

import zlib

import numpy as np
import pytest
import torch

from convert.torch_models import get_torch_model


def randomized_torch_model(arch: str, num_classes: int = 100, seed: int = 0):
    """The PyTorch reference model with random weights and non-trivial BN parameters and running statistics
    (not 1/0), and a non-zero classifier bias, so that every tensor's mapping matters."""
    torch.manual_seed(seed)
    model = get_torch_model(arch, num_classes)
    randomize_batchnorm_and_bias(model, model.linear)
    return model


def save_random_teacher(path, arch: str = "resnet8", num_classes: int = 10, seed: int = 0):
    """Writes a freshly initialized PyTorch model of `arch` (seed layout) to `path`: a teacher file for runs
    that need one but not a trained one. Returns `path`."""
    torch.manual_seed(seed)
    torch.save(get_torch_model(arch, num_classes).state_dict(), path)
    return path


def on_digits(config, *, epochs: int, log_every_steps: int = 5, model: str = "resnet8"):
    """`config` (a recipe from configs/) made a small real run: `model` on scikit-learn's digits, 22 steps per
    epoch at batch 64 (full batches only, also for RepDistiller's recipes, which keep a partial 23rd:
    tests/test_data_pipeline_train.py), evaluated and checkpointed every epoch, no progress bar. Returns it."""
    config.data.source = "digits"
    config.data.drop_last = True
    config.model = model
    config.epochs = epochs
    config.eval_every_epochs = config.checkpoint_every_epochs = 1
    config.log_every_steps = log_every_steps
    config.progress_bar = False
    return config


def randomize_batchnorm_and_bias(model: torch.nn.Module, classifier: torch.nn.Linear) -> None:
    """Gives every BatchNorm2d non-trivial parameters and running statistics and the classifier a bias."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
        classifier.bias.uniform_(-0.1, 0.1)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def assert_close_scaled(actual, reference, rel: float, what: str = ""):
    """max |actual - reference| <= rel * max |reference|: the parity criterion of the converter tests."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} vs {reference.shape}"
    diff, scale = float(np.max(np.abs(actual - reference))), float(np.max(np.abs(reference)))
    assert diff <= rel * scale, f"{what}: max|diff| {diff:.3g} > {rel:g} * max|ref| {scale:.3g}"


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: random data that is the same on every run, so that a failure
    reproduces and a tolerance is not met by luck."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
