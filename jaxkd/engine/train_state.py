"""The train state: everything a run needs to continue exactly where it stopped.

`params` and `batch_stats` hold the student under "student" and the method's trainable modules under "method";
`method_state` is the method's non-trainable device state (CRD's memory banks); `rng` is the run's base key,
from which step s draws `fold_in(rng, s)`, so a resumed run sees the same random numbers.
"""

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    method_state: Any
    rng: jax.Array  # raw uint32 key data (checkpointable as a plain array)

    def student_variables(self) -> dict:
        """The student's Flax variables, as `model.apply` and the converter take them."""
        return {"params": self.params["student"], "batch_stats": self.batch_stats["student"]}

    def method_variables(self) -> dict:
        """The method's trainable modules' Flax variables (DML's peers, BYOT's heads; {} parts if none)."""
        return {"params": self.params["method"], "batch_stats": self.batch_stats["method"]}
