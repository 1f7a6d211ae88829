"""Where a run's numbers go: one JSON object per line in `WORKDIR/metrics.jsonl`, and TensorBoard event files in
`WORKDIR/tensorboard` (written with tensorboardX, no TensorFlow needed). In a multi-process run only process 0
writes (`active`); the others' logs record nothing."""

import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricLog:
    def __init__(self, workdir, active: bool = True):
        self.active = active
        if active:
            workdir = Path(workdir)
            self.jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

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
