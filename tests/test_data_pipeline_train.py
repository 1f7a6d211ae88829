"""RepDistiller's data pipeline in training: each epoch's last partial batch is a step of its own (782 at
50,000 / 64) and resume is exact. (CRD's refresh of that batch's bank rows, on 1 and 8 devices:
tests/test_train_multidevice.py.)"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from configs import default, demo
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.setup import build
from tests.helpers.runs import SMALL_DIGITS

REPO = Path(__file__).resolve().parents[1]
DIGITS_TRAIN = 1433  # digits' training images: at batch 256, 5 full batches and one of 153


def repdistiller_digits(epochs: int):
    config = default.repdistiller_recipe(demo.get_config("teacher"))
    config.model, config.batch_size, config.epochs, config.progress_bar = "resnet8", 256, epochs, False
    config.data.digits_size = SMALL_DIGITS
    config.log_every_steps, config.eval_every_epochs, config.checkpoint_every_epochs = 4, 2, 1
    config.optimizer.lr, config.optimizer.lr_decay_epochs = 0.05, (1,)  # RepDistiller's: 0.005 from step 7 on
    return config


# data.padding, data.normalization, data.drop_last, lr timing
PYTORCH_KD_RECIPE = ("reflect", "pytorch_kd", True, "pytorch_kd")
REPDISTILLER_RECIPE = ("zeros", "repdistiller", False, "repdistiller")


@pytest.mark.parametrize("name, recipe", [
    ("baseline", PYTORCH_KD_RECIPE), ("saliencymix_wrn", PYTORCH_KD_RECIPE), ("dml_wrn", PYTORCH_KD_RECIPE),
    ("byot_wrn", PYTORCH_KD_RECIPE), ("demo", PYTORCH_KD_RECIPE), ("kd_wrn", REPDISTILLER_RECIPE),
    ("fitnet_wrn", REPDISTILLER_RECIPE), ("at_wrn", REPDISTILLER_RECIPE), ("crd_wrn", REPDISTILLER_RECIPE),
    ("crd_kd_wrn", REPDISTILLER_RECIPE), ("kd_saliencymix_wrn", REPDISTILLER_RECIPE)])
def test_each_config_takes_one_references_whole_recipe(name, recipe):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.data.padding, config.data.normalization, config.data.drop_last,
            config.optimizer.lr_decay_timing) == recipe


def test_the_recipes_steps_per_epoch_at_cifar_size():
    config = default.repdistiller_recipe(default.get_config())
    assert (config.data.padding, config.data.normalization, config.data.drop_last) == ("zeros", "repdistiller",
                                                                                       False)
    from jaxkd.data.pipeline import DataPipeline

    pipeline = DataPipeline.from_config(config)
    assert pipeline.steps_per_epoch(50_000, 64) == 782 and pipeline.last_batch_size(50_000, 64) == 16
    seed = DataPipeline.from_config(default.get_config())
    assert seed.steps_per_epoch(50_000, 64) == 781 and seed.last_batch_size(50_000, 64) == 64


def test_dispatch_plan_runs_each_epochs_last_step_alone():
    from jaxkd.engine.dispatch import dispatch_plan

    def calls(last_step_alone):  # (first step, size, fetch) of each call over 2 epochs of 7 steps
        step, out = 0, []
        for size, fetch in dispatch_plan(0, 14, 7, 4, 3, last_step_alone=last_step_alone):
            out.append((step, size, fetch))
            step += size
        return out

    # without it a chunk of 3 (steps 4, 5, 6) covers epoch 1's last step; with it, steps 6 and 13 are
    # calls of their own and the metrics are still fetched every 4 steps and at each epoch's end
    assert calls(False)[:3] == [(0, 3, False), (3, 1, True), (4, 3, True)]
    assert calls(True) == [(0, 3, False), (3, 1, True), (4, 1, False), (5, 1, False), (6, 1, True), (7, 1, True),
                           (8, 3, False), (11, 1, True), (12, 1, False), (13, 1, True)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("repdistiller_straight")
    return workdir, train_and_evaluate(repdistiller_digits(epochs=2), workdir)


def test_every_epoch_ends_with_its_partial_batch(straight_run):
    workdir, result = straight_run
    setup = build(repdistiller_digits(epochs=2))
    assert (setup.steps_per_epoch, setup.last_batch_size) == (6, DIGITS_TRAIN - 5 * 256)
    assert result["step"] == 12
    # BN's batch counter: one per train step, the partial ones included
    state_dict = torch.load(workdir / "student.pth", weights_only=True)
    assert int(state_dict["finalact.0.num_batches_tracked"]) == 12
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    assert sorted(train) == [4, 6, 8, 12]  # every 4 steps and at each epoch's end
    # accuracy over the examples the steps saw: steps 5-6 are 256 + 153 images, steps 9-12 3 * 256 + 153
    for step, images in ((6, 256 + 153), (12, 3 * 256 + 153)):
        correct = train[step]["accuracy"] * images / 100
        assert correct == pytest.approx(round(correct), abs=1e-6)
    # the lr each logged step used: epoch 1 (its partial 6th step included) at 0.05, epoch 2 at 0.005
    assert [train[s]["lr"] for s in (4, 6, 8, 12)] == pytest.approx([0.05, 0.05, 0.005, 0.005], rel=1e-6)


def test_the_loop_evaluates_with_the_recipes_normalization(straight_run):
    from jaxkd.data import load_split
    from jaxkd.engine.evaluation import evaluate_split
    from jaxkd.io.model_checkpoint import load_model_checkpoint
    from jaxkd.models import get_model

    workdir, result = straight_run
    variables, metadata = load_model_checkpoint(workdir / "model")
    assert metadata["normalization"] == "repdistiller"  # recorded for evaluating the checkpoint later
    test = load_split("digits", "test", digits_size=SMALL_DIGITS)
    ours = evaluate_split(get_model("resnet8", 10), variables, test.images, test.labels, 500,
                          normalization="repdistiller")
    assert ours["top1"] == result["last_top1"]


def test_resume_after_an_epoch_is_bitwise_exact(straight_run, tmp_path):
    train_and_evaluate(repdistiller_digits(epochs=1), tmp_path)  # ends with epoch 1's partial batch
    result = train_and_evaluate(repdistiller_digits(epochs=2), tmp_path)  # the same run, extended
    assert result["step"] == 12
    from jaxkd.io.model_checkpoint import load_model_checkpoint

    ours, straight = (load_model_checkpoint(Path(w) / "model")[0] for w in (tmp_path, straight_run[0]))
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(ours),
                                 jax.tree_util.tree_leaves_with_path(straight)):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)
