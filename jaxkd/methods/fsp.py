"""FSP: flow of solution procedure matrices (Yim et al., CVPR 2017), as RepDistiller runs it (`--distill fsp`;
`distiller_zoo/FSP.py` `FSP`, `train_student.py`, `helper/pretrain.py` `init`); docs/methods.md, "What each term
is": FSP.

- The maps are RepDistiller's feat[:-1]: the stem output and every stage output. For each consecutive pair
  (bottom, top) the larger map is adaptive-average-pooled to the smaller's size and the FSP matrix is
  mean over H*W of top_c * bottom_c' (B, C_top, C_bottom); the loss is the sum over pairs of the mean squared
  difference of the student's and teacher's matrices.
- Student and teacher need equal channels at every map (RepDistiller's "N/A" pairs): else one error line.
- It trains only in the init stage (the student's feature modules; FSP has no modules of its own); in training
  RepDistiller's FSP term is 0 (`train_distill`: loss_kd = 0): the student learns from CE alone.
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_int
from jaxkd.errors import UserError
from jaxkd.methods.base import INIT_MODULES, InitStage, Method, MethodInit
from jaxkd.methods.pooling import adaptive_avg_pool2d


def fsp_matrices(maps) -> list:
    """The FSP matrix (B, C_top, C_bottom) of each consecutive pair of NHWC maps."""
    matrices = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        size = min(bottom.shape[1], top.shape[1])  # RepDistiller pools to (H, H), the smaller map's height
        if bottom.shape[1] > size:
            bottom = adaptive_avg_pool2d(bottom, size, size)
        if top.shape[1] > size:
            top = adaptive_avg_pool2d(top, size, size)
        count = bottom.shape[1] * bottom.shape[2]
        matrices.append(jnp.einsum("bhwt,bhwc->btc", top, bottom, precision=jax.lax.Precision.HIGHEST) / count)
    return matrices


def fsp_loss(student_maps, teacher_maps) -> jax.Array:
    """RepDistiller's FSP losses summed."""
    pairs = zip(fsp_matrices(student_maps), fsp_matrices(teacher_maps))
    return sum(jnp.mean(jnp.square(s - t)) for s, t in pairs)


def fsp_maps(output) -> list:
    """RepDistiller's feat[:-1]: the stem output, then the stage outputs."""
    return [output.stem, *output.features]


class FSP(Method):
    display_name = "FSP"
    uses_teacher = True
    defaults = {"init_epochs": 30}  # RepDistiller's --init_epochs
    specs = {"init_epochs": non_negative_int}

    def check_pair(self, student, teacher) -> None:
        s_channels = [m.shape[-1] for m in fsp_maps(student)]
        t_channels = [m.shape[-1] for m in fsp_maps(teacher)]
        if s_channels != t_channels:
            raise UserError(f"fsp needs the student's and the teacher's maps (stem and stage outputs) to have the "
                            f"same channels; got {s_channels} and {t_channels} (RepDistiller: N/A for this pair)")

    def init(self, rng, probe) -> MethodInit:
        self.check_pair(probe.student, probe.teacher)
        return MethodInit(state={INIT_MODULES: {"params": {}, "batch_stats": {}}})

    def init_stage(self, config) -> InitStage:
        return InitStage(self.settings["init_epochs"], student_features=True, learning_rate=config.optimizer.lr)

    def init_loss(self, modules, student, teacher, batch):
        return fsp_loss(fsp_maps(student), fsp_maps(teacher)), {}
