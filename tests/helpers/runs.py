"""Small real training runs: a recipe made a run on scikit-learn's digits, a random teacher file, a stop request
arriving mid-run, and the student a run exported."""

import signal
from pathlib import Path

import torch

from configs import demo
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.io.stop_request import StopRequest
from jaxkd.pytorch.torch_models import get_torch_model

# The side of the digits the suite's runs train on: 16 (each 8x8 pixel repeated 2x2), a quarter of the compute of
# the default 32 for the same examples (docs/data.md); what the runs check does not depend on the size.
SMALL_DIGITS = 16


def on_digits(config, *, epochs: int, log_every_steps: int = 5, model: str = "resnet8"):
    """`config` (a recipe from configs/) made a small real run: `model` on scikit-learn's digits at 16x16
    (SMALL_DIGITS), 22 steps per epoch at batch 64 (full batches only, also for RepDistiller's recipes, which keep
    a partial 23rd: tests/test_data_pipeline_train.py), evaluated and checkpointed every epoch, no progress bar.
    Returns it."""
    config.data.source = "digits"
    config.data.digits_size = SMALL_DIGITS
    config.data.drop_last = True
    config.model = model
    config.epochs = epochs
    config.eval_every_epochs = config.checkpoint_every_epochs = 1
    config.log_every_steps = log_every_steps
    config.progress_bar = False
    return config


def small_config(epochs=2):
    """resnet8 on digits, 22 steps per epoch: the engine's smallest real run."""
    return on_digits(demo.get_config("teacher"), epochs=epochs)


def save_random_teacher(path, arch: str = "resnet8", num_classes: int = 10, seed: int = 0):
    """Writes a freshly initialized PyTorch model of `arch` (pytorch-kd layout) to `path`: a teacher file for
    runs that need one but not a trained one. Returns `path`."""
    torch.manual_seed(seed)
    torch.save(get_torch_model(arch, num_classes).state_dict(), path)
    return path


def stop_during_call(monkeypatch, call: int) -> None:
    """The train loop (and the init stage's) as if a SIGTERM arrived while its host call number `call` ran,
    after that call's stop check (init and train calls counted together); `monkeypatch.undo()` ends it."""
    calls = {"count": 0}
    real_before_dispatch = StopRequest.before_dispatch

    def before_dispatch(self):
        calls["count"] += 1
        dispatch = real_before_dispatch(self)
        if calls["count"] == call:
            self._handle(signal.SIGTERM, None)
        return dispatch

    monkeypatch.setattr(StopRequest, "before_dispatch", before_dispatch)


def final_params(workdir):
    """The variables of the student a run exported (`workdir/model`)."""
    return load_model_checkpoint(Path(workdir) / "model")[0]
