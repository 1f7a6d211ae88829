"""`gs://` paths against a real GCS server on localhost (tests/helpers/gcs_server.py, the session's `gcs` fixture): a
KD run with its workdir and teacher `.pth` in a bucket, stopped by SIGTERM and resumed, ends bitwise where a
straight local run ends and wrote the same bytes; `convert`, `evaluate` and `report` read and write objects; bad cloud
paths are one line before any work and leave nothing behind. What the commands wrote is read back through the
server's API, not through jaxkd. (The 2-process run of tests/test_scale_out.py also writes to the bucket.)
The local reference run also logs to Weights & Biases offline (`config.wandb`), read back from wandb's files."""

import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest
import torch

from configs import demo
from convert.__main__ import main as convert_main
from jaxkd import train
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.setup import check_config
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.tools import evaluate, report
from tests.helpers.assertions import assert_bitwise_equal, assert_one_line_error
from tests.helpers.evaluation_files import write_evaluation_files
from tests.helpers.gcs_server import environment_for
from tests.helpers.runs import SMALL_DIGITS, final_params, on_digits, save_random_teacher

REPO = Path(__file__).resolve().parents[1]
RUN = ["--config.model=resnet8", "--config.teacher.arch=resnet8", f"--config.data.digits_size={SMALL_DIGITS}",
       "--config.epochs=2", "--config.eval_every_epochs=1", "--config.checkpoint_every_epochs=1",
       "--config.log_every_steps=5", "--config.progress_bar=False", "--config.data.drop_last=True"]


def rows(text: str) -> list[dict]:
    """metrics.jsonl rows without the throughput (a wall-clock measure)."""
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in text.splitlines()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, gcs):
    """A random resnet8 teacher `.pth`, locally and as the object runs/cloud/teacher.pth."""
    path = save_random_teacher(tmp_path_factory.mktemp("teacher") / "resnet8.pth", "resnet8")
    gcs.upload("runs", "cloud/teacher.pth", path.read_bytes())
    return path


@pytest.fixture(scope="module")
def straight_run(teacher, tmp_path_factory):
    """KD, 2 epochs of 22 steps, local workdir and teacher, without interruption: the reference. It also logs
    to Weights & Biases in offline mode (the gs:// run does not: the same results show that wandb changes
    nothing else)."""
    workdir = tmp_path_factory.mktemp("straight")
    config = on_digits(demo.get_config("student"), epochs=2)
    config.teacher.checkpoint, config.teacher.arch = str(teacher), "resnet8"
    config.wandb.mode = "offline"
    train_and_evaluate(config, workdir)
    return workdir


def wandb_records(path: Path) -> list:
    """The protobuf records (wandb's own `Record`) of an offline run's `.wandb` file: wandb's 7-byte header,
    then LevelDB's log format (32 KiB blocks of records, each with a 7-byte header: crc, length, type; a
    record split over blocks as FIRST/MIDDLE/LAST pieces)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_records_the_metrics_of_metrics_jsonl(straight_run):
    [run_file] = (straight_run / "wandb").glob("offline-run-*/run-*.wandb")
    history = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            step = items.pop("_step")
            history.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    expected = {}
    for row in map(json.loads, (straight_run / "metrics.jsonl").read_text().splitlines()):
        expected.setdefault(row.pop("step"), {}).update(
            {f"{row['kind']}/{name}": value for name, value in row.items() if name != "kind"})
    assert history.keys() == expected.keys() and len(history) == 11  # 0: teacher; 5, 10, .. 44: train; 22, 44: eval
    for step, values in expected.items():
        assert history[step] == pytest.approx(values, rel=1e-12), step
    [run] = [record.run for record in wandb_records(run_file) if record.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert (run.project, config["method"], config["batch_size"]) == ("jaxkd", "kd", 64)


def command(workdir) -> list[str]:
    return [sys.executable, "-m", "jaxkd.train", "--config", "configs/demo.py:student", "--workdir", workdir,
            "--config.teacher.checkpoint=gs://runs/cloud/teacher.pth", *RUN]


def test_a_run_on_gs_stopped_by_sigterm_resumes_bitwise_and_writes_what_a_local_run_writes(straight_run, gcs):
    workdir = "gs://runs/cloud/kd"
    process = subprocess.Popen(command(workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while "cloud/kd/metrics.jsonl" not in gcs.list_objects("runs", "cloud/kd/") or \
            '"train"' not in gcs.read_object("runs", "cloud/kd/metrics.jsonl").decode():  # the first log, step 5
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    saved_step = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    assert 5 <= saved_step < 22, saved_step
    assert gcs.list_objects("runs", "cloud/kd/model/") == []  # not finished: no export
    resumed = subprocess.run(command(workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints at step {saved_step}" in resumed.stdout

    assert_bitwise_equal(load_model_checkpoint(f"{workdir}/model")[0], final_params(straight_run))
    objects = gcs.list_objects("runs", "cloud/kd/")
    assert {name.split("/")[2] for name in objects} == {"checkpoints", "config.json", "metrics.jsonl", "model",
                                                        "student.pth", "tensorboard", ".checkpointed"}, objects
    # each checkpoint committed with its manifest (written before Orbax's commit marker)
    steps = {name.split("/")[3] for name in objects if name.startswith("cloud/kd/checkpoints/")}
    assert steps and all(f"cloud/kd/checkpoints/{step}/jaxkd_manifest.json" in objects for step in steps), objects
    assert not [name for name in objects if name.endswith(".tmp") or "write-check" in name]
    # the student.pth export: the same bytes as the local run's
    assert gcs.read_object("runs", "cloud/kd/student.pth") == (straight_run / "student.pth").read_bytes()
    # every step logged once, the window cut by the stop logged at the stop; the straight run's values, except
    # in that window's two parts (each the mean over its own steps)
    straight = rows((straight_run / "metrics.jsonl").read_text())
    logged = rows(gcs.read_object("runs", "cloud/kd/metrics.jsonl").decode())
    partial = [row for row in logged if row["step"] == saved_step and saved_step % 5]
    expected = ([row for row in straight if row["step"] < saved_step] + partial
                + [row for row in straight if row["step"] >= saved_step])
    assert [(row["step"], row["kind"]) for row in logged] == [(row["step"], row["kind"]) for row in expected]
    cut = {saved_step, min(saved_step + 5 - saved_step % 5, 22)} if saved_step % 5 else set()  # next log: 5k or 22

    def uncut(rows_):
        return [row for row in rows_ if not (row["kind"] == "train" and row["step"] in cut)]

    assert uncut(logged) == uncut(expected)
    config = json.loads(gcs.read_object("runs", "cloud/kd/config.json"))
    assert config["teacher"]["checkpoint"] == "gs://runs/cloud/teacher.pth"
    tensorboard = [name for name in objects if "/tensorboard/" in name]
    assert len(tensorboard) == 2 and all(gcs.read_object("runs", name) for name in tensorboard)  # one a run
    # the workdir as evaluate's --checkpoint (its model/): the run's own final test accuracy
    assert evaluate.main(["--checkpoint", workdir, "--source", "digits", "--digits-size", str(SMALL_DIGITS),
                          "--out", f"{workdir}/eval.json"]) == 0
    final = [row for row in logged if row["kind"] == "eval"][-1]
    assert json.loads(gcs.read_object("runs", "cloud/kd/eval.json"))["clean"]["top1"] == final["top1"]
    # the report of the workdir, with that evaluation beside it, written as an object: the run's own numbers
    assert report.main([workdir, "--robustness", f"{workdir}/eval.json", "--json", f"{workdir}/report.json"]) == 0
    [row] = json.loads(gcs.read_object("runs", "cloud/kd/report.json"))["rows"]
    assert row["last_top1"]["mean"] == final["top1"] and row["cifar100"]["mean"] == final["top1"]
    assert row["members"][0]["workdir"] == workdir


def test_convert_and_evaluate_read_and_write_objects(straight_run, teacher, gcs, tmp_path, capsys):
    # import from the bucket into the bucket, export back: the export's bytes are those of the local round trip
    assert convert_main(["import", "gs://runs/cloud/teacher.pth", "--out", "gs://runs/convert/teacher"]) == 0
    assert convert_main(["export", "gs://runs/convert/teacher", "--out", "gs://runs/convert/teacher.pth"]) == 0
    assert convert_main(["import", str(teacher), "--out", str(tmp_path / "teacher")]) == 0
    assert convert_main(["export", str(tmp_path / "teacher"), "--out", str(tmp_path / "teacher.pth")]) == 0
    exported = gcs.read_object("runs", "convert/teacher.pth")
    assert exported == (tmp_path / "teacher.pth").read_bytes()
    original = torch.load(teacher, weights_only=True)
    for key, value in torch.load(io.BytesIO(exported), weights_only=True).items():
        assert torch.equal(value, original[key]), key
    assert convert_main(["export", "gs://runs/convert/teacher", "--out", "gs://runs/convert/teacher.pth"]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    # evaluate a .pth object, results written as an object: the numbers of the local file's evaluation
    common = ["--source", "digits", "--batch-size", "128"]
    assert evaluate.main(["--checkpoint", "gs://runs/cloud/teacher.pth", "--out", "gs://runs/eval/teacher.json",
                          *common]) == 0
    assert evaluate.main(["--checkpoint", str(teacher), "--out", str(tmp_path / "teacher.json"), *common]) == 0
    remote = json.loads(gcs.read_object("runs", "eval/teacher.json"))
    local = json.loads((tmp_path / "teacher.json").read_text())
    assert remote["clean"] == local["clean"] and remote["clean"]["count"] == 364
    assert not [name for name in gcs.list_objects("runs") if name.endswith(".tmp") or "write-check" in name]


@pytest.mark.parametrize("case", ["no bucket", "teacher's bucket", "no teacher", "workdir is an object"])
def test_bad_cloud_paths_are_one_line_before_any_work(case, teacher, gcs, capsys):
    gcs.upload("runs", "bad/notes.txt", b"kept")
    workdir, teacher_path, expected = {
        "no bucket": ("gs://no-such-bucket/run", "gs://runs/cloud/teacher.pth",
                      "--workdir gs://no-such-bucket/run: no such bucket gs://no-such-bucket"),
        "teacher's bucket": ("gs://runs/bad/run", "gs://no-such-bucket/teacher.pth",
                             "--config.teacher.checkpoint gs://no-such-bucket/teacher.pth: no such bucket "
                             "gs://no-such-bucket"),
        "no teacher": ("gs://runs/bad/run", "gs://runs/missing.pth",
                       "--config.teacher.checkpoint gs://runs/missing.pth: no such file or directory"),
        "workdir is an object": ("gs://runs/bad/notes.txt", "gs://runs/cloud/teacher.pth",
                                 "--workdir gs://runs/bad/notes.txt: exists and is not a directory"),
    }[case]
    code = train.main(["jaxkd.train", "--config", "configs/demo.py:student", "--workdir", workdir, *RUN,
                       f"--config.teacher.checkpoint={teacher_path}"])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, expected)
    assert gcs.list_objects("runs", "bad/") == ["bad/notes.txt"]  # nothing left behind
    assert gcs.read_object("runs", "bad/notes.txt") == b"kept"
    assert [name for name in gcs.list_objects("runs") if "write-check" in name] == []


def test_a_workdir_prefix_is_a_directory_while_objects_come_and_go_under_it(gcs):
    """Processes of one run check the same workdir at once, each writing and removing a probe object under it:
    the prefix must never look like a file to the others (it did when existence and directory-ness were asked
    in two requests and a probe vanished between them)."""
    from jaxkd.io.safe_write import check_output_directory

    gcs.upload("runs", "shared/notes.txt", b"")
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            gcs.upload("runs", "shared/run/probe", b"")
            gcs.delete("runs", "shared/run/probe")

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for _ in range(40):
            check_output_directory("gs://runs/shared/run", "--workdir")
    finally:
        stop.set()
        churner.join()
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_output_directory("gs://runs/shared/notes.txt", "--workdir")


def test_an_unreachable_endpoint_is_one_line_in_bounded_time(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for name, value in environment_for(closed).items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = convert_main(["import", str(save_random_teacher(tmp_path / "t.pth")), "--out", "gs://runs/x"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and err == "error: gs://runs/x: cannot reach gs://runs (no answer in 3 s)\n", err
    assert elapsed < 10, elapsed
    assert not (tmp_path / "x").exists()


def test_evaluate_reads_its_data_and_cifar100c_from_a_bucket(gcs, tmp_path):
    """`--data-dir` (cifar100-python) and `--cifar100c` as gs:// folders: the numbers of the same files on disk."""
    checkpoint = write_evaluation_files(tmp_path / "data", 40)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            gcs.upload("runs", f"evaluate_data/{path.relative_to(tmp_path / 'data')}", path.read_bytes())
    results = {}
    for where, root in (("local", str(tmp_path / "data")), ("bucket", "gs://runs/evaluate_data")):
        assert evaluate.main(["--checkpoint", str(checkpoint), "--source", "cifar100-python", "--data-dir",
                              f"{root}/cifar-100-python", "--cifar100c", f"{root}/CIFAR-100-C", "--batch-size", "16",
                              "--out", str(tmp_path / f"{where}.json")]) == 0
        results[where] = json.loads((tmp_path / f"{where}.json").read_text())
    assert results["bucket"]["clean"] == results["local"]["clean"] and results["local"]["clean"]["count"] == 40
    bucket, local = results["bucket"]["cifar100c"], results["local"]["cifar100c"]
    assert bucket.pop("directory") == "gs://runs/evaluate_data/CIFAR-100-C"
    local.pop("directory")
    assert bucket == local and len(local["evaluated"]) == 3


def test_a_wandb_mode_it_does_not_have_is_one_line():
    config = on_digits(demo.get_config("student"), epochs=1)
    config.wandb.mode = "sometimes"
    with pytest.raises(UserError, match=r"^--config.wandb.mode=sometimes: must be one of disabled, offline, online$"):
        check_config(config, data_mesh(tuple(jax.devices()[:1])))


def test_a_bucket_without_permission_is_one_line(tmp_path, monkeypatch, capsys):
    """A store that answers every request with HTTP 403, as GCS does to an account without access (the
    emulator has no permissions to refuse with)."""
    import http.server
    import threading

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error": {"code": 403, "message": "no storage.buckets.get access"}}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, value in environment_for(f"http://127.0.0.1:{server.server_address[1]}").items():
            monkeypatch.setenv(name, value)
        code = convert_main(["import", str(save_random_teacher(tmp_path / "t.pth")), "--out", "gs://runs/x"])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: gs://runs/x: no permission to read gs://runs (OSError: Forbidden")
    assert err.count("\n") == 1, err


def test_a_wandb_run_that_does_not_finish_or_fails_is_one_line_within_the_bound():
    """wandb's close waits for `run.finish()` and the service's teardown at most `timeout` seconds, then reports
    one OutputError instead of blocking the run's exit; a finish or a row that fails is one OutputError too."""
    import threading
    import types

    from jaxkd.errors import OutputError
    from jaxkd.io.wandb_log import WandbLog

    release = threading.Event()
    log = WandbLog.__new__(WandbLog)  # its wandb run replaced by one that never finishes
    log.where, log._wandb = "wandb (offline, run jaxkd-x in w)", types.SimpleNamespace(teardown=lambda: None)
    log.run = types.SimpleNamespace(finish=lambda: release.wait(60))
    start = time.monotonic()
    with pytest.raises(OutputError, match=r"^wandb \(offline, run jaxkd-x in w\): did not finish within 1 s"):
        log.close(timeout=1)
    assert time.monotonic() - start < 5
    release.set()

    def refuse(*args, **kwargs):
        raise ConnectionError("the service is gone")

    log.run = types.SimpleNamespace(finish=refuse, log=refuse)
    with pytest.raises(OutputError, match=r"cannot finish the run: ConnectionError: the service is gone$"):
        log.close(timeout=10)
    with pytest.raises(OutputError, match=r"cannot log the metrics at step 5: ConnectionError: the service is gone$"):
        log.write(5, "train", {"loss": 1.0})
