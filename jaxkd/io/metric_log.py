"""Where a run's numbers go: one JSON object per line in `WORKDIR/metrics.jsonl`, TensorBoard event files in
`WORKDIR/tensorboard` (tensorboardX, no TensorFlow), and Weights & Biases with `config.wandb` (jaxkd.io.wandb_log).
Process 0 writes; a resumed run first drops what a killed run logged after its checkpoint, so every step is
recorded once. Every row reaches every sink on the caller's thread before `write` returns, so a failing sink is
one `OutputError` at the row, never a writer thread dying alone (docs/faults.md). In `gs://` workdirs
`metrics.jsonl` is rewritten whole at each write and TensorBoard's file uploaded at most every
CLOUD_FLUSH_SECONDS."""

import json
import math
import os
import sys
import time

from jaxkd.errors import OutputError, output_error, write_errors
from jaxkd.io.paths import as_path, is_url
from jaxkd.io.safe_write import write_text_atomically
from jaxkd.io.wandb_log import WandbLog


def _import_tensorboardx():
    """tensorboardX's synchronous event-file writer, Event protos and scalar summary, imported without PyTorch
    when PyTorch is not loaded yet: tensorboardX imports torch only to name torch tensors in its type hints, and
    that import is ~1.7 s of every `jaxkd.train` start (a run that loads a .pth teacher imports torch anyway,
    later)."""
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.record_writer import directory_check
        from tensorboardX.summary import scalar
    finally:
        if hide_torch:
            del sys.modules["torch"]
    return EventsWriter, Event, SessionLog, directory_check, scalar


EventsWriter, Event, SessionLog, directory_check, scalar = _import_tensorboardx()
CLOUD_FLUSH_SECONDS = 60  # a TensorBoard event file in cloud storage is uploaded whole at most this often
FIRST_STEP = -(2 ** 31)  # below any step a run logs (an init stage's rows have steps <= 0)


class EventFile:
    """A TensorBoard event file written on the caller's thread with tensorboardX's EventsWriter (the writer its
    SummaryWriter drives from a thread): the events SummaryWriter writes for `add_scalar`, after the same purge
    marker. Each `add_scalars` is flushed to the file and synced (in cloud storage, where a flush uploads the
    whole file: at most every CLOUD_FLUSH_SECONDS), so that a failed write raises there."""

    def __init__(self, directory: str, purge_step: int | None):
        directory_check(directory)
        self.directory, self.cloud = directory, is_url(directory)
        self.events = EventsWriter(os.path.join(directory, "events"))
        if purge_step is not None:
            self.events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
            self.events.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.last_upload = -math.inf
        self.flush()

    def add_scalars(self, step: int, values: dict) -> None:
        """Writes each `tag -> number` of `values` at `step`, then flushes."""
        now = time.time()
        for tag, value in values.items():
            self.events.write_event(Event(wall_time=now, step=int(step), summary=scalar(tag, value)))
        self.flush()

    def flush(self) -> None:
        if not self.cloud or time.monotonic() - self.last_upload >= CLOUD_FLUSH_SECONDS:
            self.events.flush()
            self.last_upload = time.monotonic()

    def close(self) -> None:
        self.events.close()  # flushes (uploads) and closes


def rows_up_to(text: str, last_step: int | None) -> str:
    """The lines of a metrics.jsonl text whose step is at most `last_step` (None: no line). A line that is not a
    complete JSON row goes too: silently at the end (a killed write), with a warning elsewhere (a damaged line;
    the rows after it are kept). A log without a row at `last_step` (a checkpoint's step, which every run logs
    before saving it) lost the rows up to it, which resuming will not log again: a warning says so."""
    kept, damaged, steps = [], [], set()
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            if number < len(lines):
                damaged.append(number)
            continue
        steps.add(step)
        if last_step is not None and step <= last_step:
            kept.append(line + "\n")
    problems = []
    if damaged:
        problems.append(f"line{'s' if len(damaged) > 1 else ''} {', '.join(map(str, damaged[:5]))}"
                        f"{', ...' if len(damaged) > 5 else ''} not a complete row (dropped, the rows after kept)")
    if last_step is not None and last_step not in steps:
        before = [step for step in steps if step < last_step]
        since = f"after step {max(before)}" if before else "from the start"
        problems.append(f"no row at step {last_step}, the checkpoint this run resumes from: the rows {since} up to "
                        f"it are lost (the file was cut) and are not logged again")
    if problems:
        print(f"warning: metrics.jsonl is damaged: {'; '.join(problems)}", flush=True)
    return "".join(kept)


class _RewrittenObject:
    """An appendable text file in cloud storage: the text so far is kept and uploaded whole at every write."""

    def __init__(self, path, text: str):
        self.path, self.text = path, text

    def write(self, text: str) -> None:
        self.text += text
        self.path.write_text(self.text)

    def close(self) -> None:
        pass


class MetricLog:
    def __init__(self, workdir, active: bool = True, resume_step: int | None = None, config=None):
        """`resume_step`: the step of the checkpoint the run continues from (None: started anew; negative inside
        an init stage, whose rows precede training's step 1, `jaxkd.engine.init_stage`). `config`: the run's, whose
        `wandb` section (jaxkd.io.wandb_log) also sends the rows to Weights & Biases."""
        self.active = active
        self.resume_step = resume_step
        self.wandb = self.jsonl = self.tensorboard = None
        self.failed = False  # a write failed and was reported: closing reports nothing more
        if not active:
            return
        workdir = as_path(workdir)
        self.path, tensorboard = workdir / "metrics.jsonl", workdir / "tensorboard"
        text = self.path.read_text() if self.path.exists() else ""
        kept = rows_up_to(text, resume_step)
        if kept != text:
            write_text_atomically(kept, self.path, force=True, what="the metrics")
        try:
            self.jsonl = _RewrittenObject(self.path, kept) if is_url(self.path) else open(self.path, "a", buffering=1)
        except OSError as error:
            raise output_error(self.path, "the metrics", error) from None
        try:
            self.tensorboard = EventFile(str(tensorboard), FIRST_STEP if resume_step is None else resume_step + 1)
        except write_errors() as error:
            raise output_error(tensorboard, "the TensorBoard events", error) from None
        if config is not None and config.get("wandb") and config.wandb.mode != "disabled":

            self.wandb = WandbLog(config.wandb, workdir, config.to_dict())

    def write(self, step: int, kind: str, values: dict) -> None:
        """Records `values` (name -> number) at `step` in every sink; `kind` groups them (train, eval, teacher).
        A sink that cannot write raises OutputError."""
        if not self.active:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v)
                       for k, v in values.items()})
        line = json.dumps(record) + "\n"
        self.failed = True  # until every sink has the row
        try:
            self.jsonl.write(line)
        except write_errors() as error:
            raise output_error(self.path, "the metrics", error) from None
        if self.wandb is not None:
            self.wandb.write(step, kind, {k: v for k, v in record.items() if k not in ("step", "kind")})
        scalars = {}
        for name, value in values.items():
            if isinstance(value, (int, float)) or hasattr(value, "dtype"):
                value = float(value)
                if math.isfinite(value):
                    scalars[f"{kind}/{name}"] = value
        try:
            self.tensorboard.add_scalars(step, scalars)
        except write_errors() as error:
            raise output_error(self.tensorboard.directory, "the TensorBoard events", error) from None
        self.failed = False

    def close(self) -> None:
        """Closes every sink, each once, wandb after waiting (bounded) for it to have every row; the first sink
        that fails raises OutputError once the others are closed (unless a failed write was reported)."""
        if not self.active:
            return
        failures = []
        for sink, path, what in ((self.jsonl, getattr(self, "path", None), "the metrics"),
                                 (self.tensorboard, getattr(self.tensorboard, "directory", None), "the TensorBoard events"),
                                 (self.wandb, None, None)):
            if sink is None:
                continue
            try:
                sink.close()
            except write_errors() + (OutputError,) as error:
                failures.append(error if path is None else output_error(path, what, error))
        self.jsonl = self.tensorboard = self.wandb = None
        if failures and not self.failed:
            raise failures[0]
