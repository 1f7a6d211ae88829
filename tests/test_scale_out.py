"""Multi-process runs: `python -m jaxkd.train` on 2 processes x 4 simulated CPU devices, joined by
`jax.distributed` through a loopback coordinator, trains like one process on one device; only process 0
writes metrics, messages and exports; its checkpoint restores on one device; SIGTERM to one process stops
both at the same step. The 2-process run reads its teacher from and writes its workdir to a bucket of a GCS
server on localhost (tests/helpers/gcs_server.py), as on a Cloud TPU slice whose hosts share no disk; what it wrote is
read back through the server's API.

The run is CRD + KD (configs/crd_kd_wrn.py) on digits with a resnet8 student: the step has the CE, KD and CRD
terms and CRD's replicated memory banks. Batch 1024 makes an epoch one step (1,433 training digits): layouts
are compared at the checkpoint of the first step from the same state, since CRD amplifies the float noise of
reduction order (measured on the parameters: at batch 512, after 2 steps, 1.9x the tolerance below; after 1 step
0.014x). The 2-process run is also the uninterrupted run the SIGTERM test's resumed run must equal bit for bit.
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from configs import crd_kd_wrn
from jaxkd import train
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.mesh import data_mesh, replicated
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import build, check_config
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.io.run_checkpoint import RunCheckpoints
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.processes import finish, free_port, launch, worst_ratio
from tests.helpers.runs import SMALL_DIGITS, save_random_teacher

REPO = Path(__file__).resolve().parents[1]
BATCH = 1024
STEPS_PER_EPOCH = 1433 // BATCH


def overrides(teacher) -> list[str]:
    return ["--config.data.source=digits", f"--config.data.digits_size={SMALL_DIGITS}", "--config.model=resnet8",
            f"--config.teacher.checkpoint={teacher}", "--config.teacher.arch=resnet8", "--config.crd.nce_k=256",
            f"--config.batch_size={BATCH}", "--config.progress_bar=False",
            "--config.data.drop_last=True"]  # one step per epoch (CRD's noise)


def config_of(teacher):
    """The config the command line of `overrides` builds, for restoring its checkpoints here."""
    config = crd_kd_wrn.get_config()
    config.data.source, config.model, config.batch_size, config.progress_bar = "digits", "resnet8", BATCH, False
    config.data.digits_size = SMALL_DIGITS
    config.teacher.checkpoint, config.teacher.arch, config.crd.nce_k = str(teacher), "resnet8", 256
    config.data.drop_last = True
    return config


def start(workdir, teacher, *extra, processes: int = 1, devices_per_process: int = 1):
    """Starts the training command (CRD + KD on digits) on one process or several."""
    return launch("jaxkd.train", "--config", "configs/crd_kd_wrn.py", "--workdir", workdir, *overrides(teacher),
                  *extra, processes=processes, devices_per_process=devices_per_process)


def assert_ok(results):
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code == 0, f"process {rank} exited {code}: {stdout[-1500:]}\n{stderr[-3000:]}"


def restore_on_one_device(workdir, teacher, step: int | None = None):
    """The train state of `workdir` at `step` (None: the latest), restored onto this process's single device."""
    config = config_of(teacher)
    setup = build(config, jax.devices()[:1])
    template = jax.device_put(create_train_state(setup), replicated(setup.mesh))
    checkpoints = RunCheckpoints(workdir, keep=EPOCHS)
    try:
        if step is None:
            state, _ = checkpoints.restore(template)
        else:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
            state = checkpoints.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
    finally:
        checkpoints.close()
    return state


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_random_teacher(tmp_path_factory.mktemp("teacher") / "resnet8.pth", "resnet8")


TWO = "scale_out/two_processes"  # the 2-process run's workdir in the bucket `runs`


# 3 epochs of one step, each logged and checkpointed (every checkpoint kept), evaluated at the end: the SIGTERM test
# stops its run after the first step, and resumes it to this run's end
EPOCHS = 3
RUN = [f"--config.epochs={EPOCHS}", "--config.log_every_steps=1", f"--config.eval_every_epochs={EPOCHS}",
       "--config.checkpoint_every_epochs=1", f"--config.keep_checkpoints={EPOCHS}"]


@pytest.fixture(scope="module")
def runs(teacher, tmp_path_factory, gcs):
    """The run (RUN) on one device (local workdir and teacher), and on 2 processes x 4 devices (workdir and
    teacher in the bucket), side by side."""
    gcs.upload("runs", "scale_out/resnet8.pth", teacher.read_bytes())
    one, two = tmp_path_factory.mktemp("one_device"), f"gs://runs/{TWO}"
    single = start(one, teacher, *RUN)
    pair = start(two, "gs://runs/scale_out/resnet8.pth", *RUN, processes=2, devices_per_process=4)
    single_results, pair_results = finish(single), finish(pair)
    assert_ok(single_results)
    assert_ok(pair_results)
    return {"one": one, "two": two, "one_results": single_results, "two_results": pair_results,
            "one_metrics": (one / "metrics.jsonl").read_text(),
            "two_metrics": gcs.read_object("runs", f"{TWO}/metrics.jsonl").decode()}


def test_two_processes_train_like_one_device(runs, teacher):
    # The teacher's evaluation (fixed weights; each process feeds only its rows of every test batch) is exact.
    teacher_top1 = [next(json.loads(line)["top1"] for line in runs[f"{name}_metrics"].splitlines()
                         if json.loads(line)["kind"] == "teacher") for name in ("one", "two")]
    assert teacher_top1[0] == teacher_top1[1]
    # After one step (CRD amplifies the reductions' float noise step by step: see the module's docstring).
    one_state, two_state = (restore_on_one_device(runs[name], teacher, step=STEPS_PER_EPOCH) for name in ("one", "two"))
    assert int(one_state.step) == int(two_state.step) == STEPS_PER_EPOCH
    one_model, two_model = (jax.device_get(state.student_variables()) for state in (one_state, two_state))
    # Same tolerance as the 8-device step test: only the order of floating-point reductions differs.
    assert worst_ratio(one_model, two_model) <= 1, worst_ratio(one_model, two_model)
    crd_one, crd_two = (jax.device_get(state.method_state) for state in (one_state, two_state))
    banks = ("bank_student", "bank_teacher", "z_student", "z_teacher")
    assert worst_ratio({k: crd_one[k] for k in banks}, {k: crd_two[k] for k in banks}) <= 1
    # The memory banks really moved (the comparison is not between two initial banks).
    initial = create_train_state(build(config_of(teacher), jax.devices()[:1]))
    moved = np.abs(np.asarray(crd_two["bank_student"]) - np.asarray(initial.method_state["bank_student"]))
    assert np.count_nonzero(moved.max(axis=1) > 1e-3) >= BATCH


def test_only_process_0_writes_metrics_messages_and_exports(runs, gcs):
    one_records = [json.loads(line) for line in runs["one_metrics"].splitlines()]
    two_records = [json.loads(line) for line in runs["two_metrics"].splitlines()]
    assert [(r["step"], r["kind"]) for r in two_records] == [(r["step"], r["kind"]) for r in one_records]
    objects = gcs.list_objects("runs", f"{TWO}/")
    assert len([name for name in objects if "/tensorboard/" in name]) == 1  # one event file: one writer
    (_, stdout_0, _), (_, stdout_1, _) = runs["two_results"]
    assert stdout_0.count("final test top-1") == 1 and stdout_0.count(f"epoch {EPOCHS}/{EPOCHS}") == 1
    assert "top-1" not in stdout_1 and "wrote" not in stdout_1
    names = sorted({name[len(TWO) + 1:].split("/")[0] for name in objects})
    # no .lock in a bucket (object storage has no locks), no temporary or probe objects left
    assert names == [".checkpointed", "checkpoints", "config.json", "metrics.jsonl", "model", "student.pth",
                     "tensorboard"], names
    assert sorted(path.name for path in runs["one"].iterdir()) == [".checkpointed", ".lock"] + names[1:]  # the same
    # the checkpoint's manifest, written by process 0 before Orbax's commit marker
    assert f"{TWO}/checkpoints/{STEPS_PER_EPOCH}/jaxkd_manifest.json" in objects, objects
    exported = torch.load(io.BytesIO(gcs.read_object("runs", f"{TWO}/student.pth")), weights_only=True)
    model = get_torch_model("resnet8", 10)
    model.load_state_dict(exported)  # strict


def test_checkpoint_of_two_processes_restores_on_one_device(runs, teacher, tmp_path, gcs):
    state = restore_on_one_device(runs["two"], teacher)
    model, _ = load_model_checkpoint(f"{runs['two']}/model")  # written from the same final state
    restored = jax.device_get(state.student_variables())
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(model),
                                 jax.tree_util.tree_leaves_with_path(restored), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert all(leaf.sharding.device_set == {jax.devices()[0]} for leaf in jax.tree.leaves(state))
    # And the command resumes it on one device, for a second epoch (in a local copy: the other tests read the
    # run; it also shows that a bucket's workdir copied to a disk is a workdir).
    resumed = gcs.download("runs", TWO, tmp_path / "resumed")
    code, stdout, stderr = finish(start(resumed, "gs://runs/scale_out/resnet8.pth",
                                        f"--config.epochs={EPOCHS + 1}"))[0]
    assert code == 0, stderr[-3000:]
    assert f"resumed from {resumed / 'checkpoints'} at step {EPOCHS * STEPS_PER_EPOCH} (epoch {EPOCHS + 1} of " \
           f"{EPOCHS + 1})" in stdout
    assert restore_on_one_device(resumed, teacher).step == (EPOCHS + 1) * STEPS_PER_EPOCH


# `python -m jaxkd.train` whose process 1 sends itself SIGTERM (as a preemption notice reaching one host) just
# before its second train dispatch: a real signal through JAX's preemption notifier, at a point that does not
# depend on how fast the run goes.
SIGTERM_IN_PROCESS_1 = r"""
import os, signal, sys, time
from jaxkd.io.stop_request import StopRequest

if "--process_id=1" in sys.argv:
    before_dispatch, calls = StopRequest.before_dispatch, []

    def notice_then_check(self):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the notice reaches the coordination service
        return before_dispatch(self)

    StopRequest.before_dispatch = notice_then_check
from jaxkd.train import main
sys.exit(main(["jaxkd.train", *sys.argv[1:]]))
"""


def test_sigterm_to_one_process_stops_both_and_the_same_command_resumes_to_the_uninterrupted_run(runs, teacher,
                                                                                                  tmp_path, gcs):
    """A preemption notice to process 1 alone: both processes save at the same step and exit 143; the same
    command then resumes on 2 processes and ends bitwise equal to the uninterrupted 2-process run of `runs`
    (weights, CRD's banks, every metrics row once and equal in value). Its epochs are one step each; the stop lands
    after the first (the notice precedes the second dispatch)."""
    common = ["--config", "configs/crd_kd_wrn.py", *overrides(teacher), *RUN]
    stopped = tmp_path / "stopped"
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    interrupted = [subprocess.Popen([sys.executable, "-c", SIGTERM_IN_PROCESS_1, "--workdir", str(stopped), *common,
                                     f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                     f"--process_id={rank}"],
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for rank in range(2)]
    results = finish(interrupted)
    assert [code for code, _, _ in results] == [143, 143], [r[2][-2000:] for r in results]
    saved = max(int(path.name) for path in (stopped / "checkpoints").iterdir() if path.name.isdigit())
    assert 0 < saved < EPOCHS * STEPS_PER_EPOCH, saved
    assert f"SIGTERM: saved a checkpoint at step {saved}" in results[0][1]
    resumed = finish(start(stopped, teacher, *RUN, processes=2, devices_per_process=4))
    assert_ok(resumed)
    assert f"resumed from {stopped / 'checkpoints'} at step {saved}" in resumed[0][1]
    rows = [[{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in text.splitlines()]
            for text in ((stopped / "metrics.jsonl").read_text(), runs["two_metrics"])]
    assert rows[0] == rows[1]
    ours, reference = (load_model_checkpoint(workdir)[0] for workdir in (stopped / "model", f"{runs['two']}/model"))
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(ours),
                                 jax.tree_util.tree_leaves_with_path(reference), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    banks = [jax.device_get(restore_on_one_device(workdir, teacher).method_state) for workdir in (stopped, runs["two"])]
    for name in ("bank_student", "bank_teacher", "z_student", "z_teacher"):
        np.testing.assert_array_equal(banks[0][name], banks[1][name], err_msg=name)


GLOO_MESSAGES = re.compile(r"\[Gloo\] Rank(?:\[Gloo\] Rank|is connected to|peer ranks\."
                           r"|Expected number of connected peer ranks is :|\d+| |\n)*")


def own_output(stdout: str) -> str:
    """A process's standard output without the messages of JAX's CPU collectives library (gloo) about its peers.

    Gloo writes "[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks is : N" and
    a newline in pieces, from one thread per local device, so the messages of two devices can interleave piece by
    piece ("[Gloo] Rank 2 ...[Gloo] Rank 3 ... : 3\n\n"). A run of such pieces is removed, keeping the newlines
    beyond one per message (those are the process's own).
    """
    def without_messages(run: re.Match) -> str:
        text = run.group()
        return "\n" * max(0, text.count("\n") - text.count("[Gloo] Rank"))

    return GLOO_MESSAGES.sub(without_messages, stdout)


@pytest.mark.slow
def test_evaluation_commands_on_two_processes_report_like_one(tmp_path):
    """`jaxkd.tools.robustness` and `jaxkd.tools.evaluate` on 2 processes x 2 devices: the same numbers as one process
    (70 clean images and 35 per corruption: not multiples of the 4 devices' batch shares); process 0 alone
    prints and writes."""
    from tests.helpers.evaluation_files import write_evaluation_files

    checkpoint, data = write_evaluation_files(tmp_path, 70), tmp_path / "cifar-100-python"
    common = ["--cifar100c", tmp_path / "CIFAR-100-C", "--source", "cifar100-python", "--data-dir", data,
              "--batch-size", 16, "--quiet"]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    one = finish(launch("jaxkd.robustness", checkpoint, "--json", outputs / "one.json", *common))
    two = finish(launch("jaxkd.robustness", checkpoint, "--json", outputs / "two.json", "--out",
                        outputs / "two.md", *common, processes=2, devices_per_process=2))
    evaluated = finish(launch("jaxkd.evaluate", "--checkpoint", checkpoint, "--out", outputs / "evaluate.json",
                              *common, processes=2, devices_per_process=2))
    for results in (one, two, evaluated):
        assert_ok(results)
    reference = json.loads((outputs / "one.json").read_text())["rows"][0]["results"]
    row = json.loads((outputs / "two.json").read_text())["rows"][0]["results"]
    evaluation = json.loads((outputs / "evaluate.json").read_text())
    assert (reference["devices"], row["devices"], evaluation["devices"]) == ("1 x cpu", "4 x cpu", "4 x cpu")
    for results in (row, evaluation):
        assert results["clean"] == reference["clean"] and results["cifar100c"] == reference["cifar100c"]
    assert reference["clean"]["count"] == 70 and reference["cifar100c"]["evaluated"]
    # Process 0 prints the table and writes; process 1 prints nothing and writes nothing.
    table = one[0][1].removesuffix(f"wrote {outputs / 'one.json'}\n")
    assert "| ResNet8 | resnet8_100 |" in table
    assert own_output(two[0][1]) == table + f"wrote {outputs / 'two.md'}\nwrote {outputs / 'two.json'}\n"
    assert "CIFAR-100-C mean" in own_output(evaluated[0][1])
    assert own_output(two[1][1]) == own_output(evaluated[1][1]) == ""
    assert sorted(p.name for p in outputs.iterdir()) == ["evaluate.json", "one.json", "two.json", "two.md"]


@pytest.mark.parametrize("scaling, batch, expected_lr", [("none", 512, 0.05), ("linear", 512, 0.4),
                                                         ("linear", 64, 0.05), ("linear", 32, 0.025)])
def test_linear_lr_scaling_multiplies_the_lr_by_the_batch_ratio(scaling, batch, expected_lr):
    config = crd_kd_wrn.get_config()
    config.optimizer.lr_scaling, config.batch_size = scaling, batch
    config.optimizer.weight_decay, config.optimizer.momentum = 0.0, 0.0
    optimizer = make_optimizer(config, steps_per_epoch=10)
    params = {"w": np.ones(3, np.float32)}
    updates, _ = optimizer.update({"w": np.full(3, 2.0, np.float32)}, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -2.0 * expected_lr, rtol=1e-6)


def documented_train_commands(markdown: str) -> list[list[str]]:
    """The arguments of every `python -m jaxkd.train` command in the fenced code blocks of `markdown`."""
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", markdown, flags=re.S)
    commands = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        for match in re.finditer(r"python -m jaxkd\.train([^\n'&;]*)", text):
            line = match.group(1).replace("$HOME", "/home/user").replace("$rank", "0")
            commands.append(shlex.split(line, comments=True))
    return commands


@pytest.mark.parametrize("document", ["README.md", "docs/scale_out.md"])
def test_documented_commands_parse_with_the_train_command_line(document, monkeypatch):
    commands = documented_train_commands((REPO / document).read_text())
    assert len(commands) >= {"README.md": 2, "docs/scale_out.md": 4}[document]
    monkeypatch.chdir(REPO)  # config paths in the docs are relative to the repository
    for arguments in commands:
        flags_ = train.parse_command_line(["jaxkd.train", *arguments])
        check_config(flags_.config, data_mesh(tuple(jax.devices()[:1])))
