"""A real digits run logs, at each step, the lr that step used: the seed's decay shows one step into its epoch.
(RepDistiller's timing goes through the same schedule; tests/test_optimizer.py steps both rules.)"""

import json

import pytest

from configs import demo
from jaxkd.engine.loop import train_and_evaluate


def test_metrics_show_the_seeds_decay_after_the_first_step_of_the_epoch(tmp_path):
    config = demo.get_config("teacher")  # the seed's recipe
    assert config.optimizer.lr_decay_timing == "pytorch_kd"
    config.model, config.batch_size, config.epochs, config.progress_bar = "resnet8", 256, 2, False
    config.log_every_steps, config.eval_every_epochs, config.checkpoint_every_epochs = 1, 2, 2
    config.optimizer.lr, config.optimizer.lr_decay_epochs = 0.05, (2,)
    train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    spe = 1433 // 256  # digits' 1,433 training images: 5 full batches per epoch
    assert sorted(lrs) == list(range(1, 2 * spe + 1))  # the record at step s: the lr of the s-th step
    # the first step of epoch 2 (the (spe + 1)-th) still at 0.05, the next ones at 0.005 (RepDistiller's timing
    # would keep 0.05 for all of epoch 2)
    assert [lrs[s] for s in range(1, 2 * spe + 1)] == pytest.approx([0.05] * (spe + 1) + [0.005] * (spe - 1),
                                                                    rel=1e-6)
