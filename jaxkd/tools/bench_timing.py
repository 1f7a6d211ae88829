"""The bench's timed parts (`Part`) and its FLOP count of a lowered program (`lowered_flops`), shared by the
jaxkd, PyTorch (`jaxkd.tools.bench_torch`) and seeds-in-one-program (`jaxkd.tools.multi_run`) parts of `jaxkd.tools.bench`."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import jax


@dataclasses.dataclass
class Part:
    """One timed thing: `run()` does `images` images of work and returns its duration in seconds."""

    name: str
    images: int
    run: Callable[[], float]
    flops_per_image: float | None = None
    info: dict = dataclasses.field(default_factory=dict)
    seconds: list = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        median = statistics.median(self.seconds)
        rates = sorted(self.images / s for s in self.seconds)
        out = {"images_per_s": self.images / median, "images_per_s_min": rates[0], "images_per_s_max": rates[-1],
               "seconds": self.seconds, "images_per_repeat": self.images, **self.info}
        if self.flops_per_image:
            out["flops_per_s"] = self.flops_per_image * self.images / median
        return out


def lowered_flops(lowered: jax.stages.Lowered) -> float | None:
    """XLA's FLOP count (HloCostAnalysis: a multiply-add is 2) of a lowered program, before the backend's
    rewrites: by then a GPU program's convolutions are cuDNN calls that the count skips (a compiled KD step's
    count on an H100 was 1% of its CPU count). Backends behind PJRT's plugin interface (GPU, TPU) cannot count a
    lowered program, so the CPU backend counts the same HLO for them. None when no count can be had."""
    cost = lowered.cost_analysis()
    if cost is None:
        try:
            from jax._src.lib import _jax  # what Lowered.cost_analysis calls; there is no public route

            cpu_backend = jax.local_devices(backend="cpu")[0].client
            cost = _jax.hlo_module_cost_analysis(cpu_backend, lowered.compiler_ir("hlo").as_hlo_module())
        except (ImportError, AttributeError, RuntimeError):  # no CPU backend (JAX_PLATFORMS), another jaxlib
            return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None
