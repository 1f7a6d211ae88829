"""Where a run's numbers go: one JSON object per line in `WORKDIR/metrics.jsonl`, and TensorBoard event files in
`WORKDIR/tensorboard` (written with tensorboardX, no TensorFlow needed). In a multi-process run only process 0
writes (`active`); the others' logs record nothing.

A run resumed from the checkpoint at step S (None: started anew) first drops what a killed run logged after S:
`metrics.jsonl` keeps its rows up to S (none for a new start), rewritten atomically, and the new TensorBoard file
starts with a purge marker at S + 1, which makes TensorBoard hide the older files' events from that step on.
So every step is recorded once, however often the run was interrupted. With `config.wandb` on, the rows also go
to Weights & Biases (`jaxkd.wandb_log`).

In cloud storage (`gs://`), where objects cannot be appended to, `metrics.jsonl` is rewritten whole at every
write (GCS replaces an object whole, so a reader never sees a partial row), and tensorboardX uploads its event
file through its own GCS client at every flush.
"""

import json
import math
import sys

from jaxkd.paths import as_path, is_url
from jaxkd.safe_write import write_text_atomically


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch when PyTorch is not loaded yet: tensorboardX imports
    torch only to name torch tensors in its type hints, and that import is ~1.7 s of every `jaxkd.train` start
    (a run that loads a .pth teacher imports torch anyway, later)."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _summary_writer_class()

FIRST_STEP = -(2 ** 31)  # below any step a run logs (an init stage's rows have steps <= 0)


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
        an init stage, whose rows precede training's step 1, `jaxkd.init_stage`). `config`: the run's, whose
        `wandb` section (jaxkd.wandb_log) also sends the rows to Weights & Biases."""
        self.active = active
        self.resume_step = resume_step
        self.wandb = None
        if active and config is not None and config.get("wandb") and config.wandb.mode != "disabled":
            from jaxkd.wandb_log import WandbLog

            self.wandb = WandbLog(config.wandb, workdir, config.to_dict())
        if active:
            workdir = as_path(workdir)
            path = workdir / "metrics.jsonl"
            text = path.read_text() if path.exists() else ""
            kept = rows_up_to(text, resume_step)
            if kept != text:
                write_text_atomically(kept, path, force=True, what="the metrics")
            self.jsonl = _RewrittenObject(path, kept) if is_url(path) else open(path, "a", buffering=1)
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=FIRST_STEP
                                             if resume_step is None else resume_step + 1)

    def write(self, step: int, kind: str, values: dict) -> None:
        """Records `values` (name -> number) at `step`; `kind` groups them (train, eval, teacher)."""
        if not self.active:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v)
                       for k, v in values.items()})
        self.jsonl.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.write(step, kind, {k: v for k, v in record.items() if k not in ("step", "kind")})
        for name, value in values.items():
            if isinstance(value, (int, float)) or hasattr(value, "dtype"):
                value = float(value)
                if math.isfinite(value):
                    self.tensorboard.add_scalar(f"{kind}/{name}", value, int(step))

    def close(self) -> None:
        if not self.active:
            return
        self.jsonl.close()
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.close()
