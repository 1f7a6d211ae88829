"""Where a run's numbers go: one JSON object per line in `WORKDIR/metrics.jsonl`, and TensorBoard event files in
`WORKDIR/tensorboard` (written with tensorboardX, no TensorFlow needed). In a multi-process run only process 0
writes (`active`); the others' logs record nothing.

A run resumed from the checkpoint at step S (None: started anew) first drops what a killed run logged after S:
`metrics.jsonl` keeps its rows up to S (none for a new start), rewritten atomically, and the new TensorBoard file
starts with a purge marker at S + 1, which makes TensorBoard hide the older files' events from that step on.
So every step is recorded once, however often the run was interrupted.
"""

import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter

from jaxkd.safe_write import write_text_atomically

FIRST_STEP = -(2 ** 31)  # below any step a run logs (an init stage's rows have steps <= 0)


def rows_up_to(text: str, last_step: int | None) -> str:
    """The lines of a metrics.jsonl text whose step is at most `last_step` (None: no line); a line that is not
    a complete JSON row (the end of a killed write) goes too."""
    kept = []
    for line in text.splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if last_step is not None and step <= last_step:
            kept.append(line + "\n")
    return "".join(kept)


class MetricLog:
    def __init__(self, workdir, active: bool = True, resume_step: int | None = None):
        """`resume_step`: the step of the checkpoint the run continues from (None: started anew; negative inside
        an init stage, whose rows precede training's step 1, `jaxkd.init_stage`)."""
        self.active = active
        if active:
            workdir = Path(workdir)
            path = workdir / "metrics.jsonl"
            if path.exists():
                text = path.read_text()
                kept = rows_up_to(text, resume_step)
                if kept != text:
                    write_text_atomically(kept, path, force=True, what="the metrics")
            self.jsonl = open(path, "a", buffering=1)
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
