"""SaliencyMix inside the training step: baseline and KD on digits end to end, one compile for mixed and unmixed
batches, and a run started when its settings sat at the config's top level resumes."""

import json
from pathlib import Path

import jax
import numpy as np

from configs import kd_saliencymix_wrn, saliencymix_wrn
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.mesh import replicated
from jaxkd.engine.setup import build
from jaxkd.engine.step import make_train_step, zero_sums
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.io.workdir import MOVED_KEYS
from jaxkd.tools import report
from tests.helpers.runs import save_random_teacher, small_config


def _on_digits(config, epochs=2):
    """The recipe's run on digits (tests/helpers/runs.py's small run), with the recipe's SaliencyMix settings."""
    small = small_config(epochs)
    mix = {key: config.data[key] for key in ("saliencymix", "saliencymix_prob", "saliencymix_per_example")}
    for key in ("model", "data", "epochs", "eval_every_epochs", "checkpoint_every_epochs", "log_every_steps",
                "progress_bar", "optimizer"):
        config[key] = small[key]
    config.data.update(mix)
    return config


def _train_records(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_baseline_with_saliencymix_learns_and_differs_from_plain(tmp_path):
    config = _on_digits(saliencymix_wrn.get_config())
    assert config.data.saliencymix
    mixed = train_and_evaluate(config, tmp_path / "mixed")
    records = _train_records(tmp_path / "mixed")
    # chance is 10%; learning as tests/test_methods_learn.py counts it: at least twice chance
    assert records[-1]["loss"] < records[0]["loss"] and mixed["last_top1"] >= 20.0, mixed
    config.data.saliencymix = False
    train_and_evaluate(config, tmp_path / "plain")
    with_mix = load_model_checkpoint(tmp_path / "mixed" / "model")[0]["params"]["linear"]["kernel"]
    without = load_model_checkpoint(tmp_path / "plain" / "model")[0]["params"]["linear"]["kernel"]
    assert not np.allclose(with_mix, without)


def test_kd_with_saliencymix_runs_end_to_end(tmp_path):
    save_random_teacher(tmp_path / "teacher.pth", "resnet8")
    config = _on_digits(kd_saliencymix_wrn.get_config(), epochs=1)
    config.teacher.checkpoint, config.teacher.arch = str(tmp_path / "teacher.pth"), ""
    result = train_and_evaluate(config, tmp_path / "run")
    records = _train_records(tmp_path / "run")
    assert result["step"] == 22 and all(np.isfinite(r["loss"]) and r["kd"] > 0 for r in records)


def test_mixed_and_unmixed_steps_share_one_compile():
    config = small_config()
    config.data.saliencymix, config.data.saliencymix_prob = True, 0.5
    setup = build(config)
    step = make_train_step(setup)
    whole = replicated(setup.mesh)  # placed as the training loop places them
    state = jax.device_put(create_train_state(setup), whole)
    data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), whole)
    permutation = jax.device_put(np.arange(len(setup.train), dtype=np.int32), whole)
    sums = zero_sums(setup)
    for _ in range(8):  # P(all 8 batches mixed or none) = 2 / 256
        state, sums = step(state, sums, None, *data, permutation)
    assert step._cache_size() == 1
    assert np.isfinite(float(sums["loss"]))


def test_a_run_started_with_the_settings_at_the_top_level_resumes_and_reports(tmp_path):
    """SaliencyMix's settings moved from the config's top level into `config.data`: a workdir whose config.json
    holds them at the top level (a run started before) resumes as the same run, and the report reads them."""
    config = small_config(epochs=1)
    config.data.saliencymix, config.data.saliencymix_prob = True, 0.25
    train_and_evaluate(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for old, new in MOVED_KEYS.items():
        saved[old] = saved["data"].pop(new.removeprefix("data."))
    (tmp_path / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
    assert report.load_run(str(tmp_path)).key[3] is True
    config.epochs = 2
    assert train_and_evaluate(config, tmp_path)["step"] == 44  # resumed at step 22 (a new run is refused)
    assert json.loads((tmp_path / "config.json").read_text())["data"]["saliencymix_prob"] == 0.25  # today's layout
