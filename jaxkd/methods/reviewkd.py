"""ReviewKD: distilling knowledge via knowledge review (Chen et al., CVPR 2021), as mdistiller's
`distillers/ReviewKD.py` (`ReviewKD.forward_train`, `ABF`, `hcl_loss`) runs it (docs/methods.md, "What each
term is": ReviewKD).

The student's stage outputs and its pooled vector (as a 1x1 map), deepest first, pass through a chain of ABF
modules: each maps its level to `mid` channels (1x1 conv + BN), fuses it with the previous (deeper) level's
result upsampled to its size (nearest) through two sigmoid attention maps, resizes to the teacher's size at that
level (nearest) and maps to the teacher's channels (3x3 conv + BN). The term is `min(epoch / warmup, 1)` times
the HCL loss (MSE plus the MSE of 4x4, 2x2, 1x1 adaptive-average-pooled maps smaller than the map, weighted
1, 1/2, 1/4, 1/8 and normalized by their sum) between each output and the teacher's pre-activation stage output
(mdistiller's `preact_feats`) or pooled vector; the engine's beta is mdistiller's REVIEWKD_WEIGHT.

mdistiller's per-pair settings (SHAPES, OUT_SHAPES, IN_CHANNELS, OUT_CHANNELS) are the models' feature sizes
and channels; here they are read from the probe's shapes, so every pair works without them. Its mid channels
are min(512, the pooled vector's size). The ABFs train with the student in train mode (BN batch statistics),
their convs initialized as mdistiller's (`kaiming_uniform_(a=1)`, the attention conv PyTorch's default).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.config.specs import flag, positive_int
from jaxkd.methods.base import Method, TermOutput, epoch_warmup
from jaxkd.methods.pooling import adaptive_avg_pool2d
from jaxkd.models.torch_layers import batch_norm, conv

# torch.nn.init.kaiming_uniform_(w, a=1): gain sqrt(2 / (1 + a^2)) = 1, U(+-sqrt(3 / fan_in))
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
HCL_POOL_SIZES = (4, 2, 1)


def nearest_resize(x: jax.Array, size: int) -> jax.Array:
    """`F.interpolate(x, (size, size), mode="nearest")` on NHWC: output index i reads input floor(i * in / out)
    (PyTorch's float32 scale), clamped to the last."""
    def indices(size_in):
        scale = np.float32(size_in) / np.float32(size)
        return np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int32), size_in - 1)

    return x[:, indices(x.shape[1])][:, :, indices(x.shape[2])]


class ABF(nn.Module):
    """mdistiller's `ABF(in_channel, mid_channel, out_channel, fuse)`; returns (output, residual for the next)."""

    mid_channels: int
    out_channels: int
    fuse: bool

    @nn.compact
    def __call__(self, x, residual, out_size: int, train: bool):
        x = batch_norm(conv(x, self.mid_channels, 1, "conv1", kernel_init=kaiming_uniform_a1), "bn1", train)
        if self.fuse:
            residual = nearest_resize(residual, x.shape[1])
            attention = nn.sigmoid(conv(jnp.concatenate([x, residual], axis=-1), 2, 1, "att_conv", bias=True))
            x = x * attention[..., 0:1] + residual * attention[..., 1:2]
        if x.shape[2] != out_size:  # mdistiller compares the width, x.shape[-1] in NCHW
            x = nearest_resize(x, out_size)
        out = batch_norm(conv(x, self.out_channels, 3, "conv2", padding=1, kernel_init=kaiming_uniform_a1), "bn2",
                         train)
        return out, x


class ReviewChain(nn.Module):
    """The ABFs, deepest level first (mdistiller's `self.abfs`, reversed): `abf0` reads the pooled vector."""

    mid_channels: int
    out_channels: tuple  # the teacher's channels per level, deepest first
    out_sizes: tuple  # the teacher's map sizes per level, deepest first

    @nn.compact
    def __call__(self, levels, train: bool):
        """`levels`: the student's maps, deepest first. Returns the outputs shallowest first (the teacher's order)."""
        results, residual = [], None
        for i, (x, channels, size) in enumerate(zip(levels, self.out_channels, self.out_sizes)):
            out, residual = ABF(self.mid_channels, channels, fuse=i > 0, name=f"abf{i}")(x, residual, size, train)
            results.insert(0, out)
        return results


def hcl_loss(student_maps, teacher_maps) -> jax.Array:
    """mdistiller's `hcl_loss`: summed over levels, each the normalized pyramid of MSEs described above."""
    total = jnp.zeros((), jnp.float32)
    for fs, ft in zip(student_maps, teacher_maps):
        loss, weight, weights = jnp.mean(jnp.square(fs - ft)), 1.0, 1.0
        for size in HCL_POOL_SIZES:
            if size >= fs.shape[1]:
                continue
            weight /= 2.0
            pooled_s, pooled_t = adaptive_avg_pool2d(fs, size, size), adaptive_avg_pool2d(ft, size, size)
            loss = loss + jnp.mean(jnp.square(pooled_s - pooled_t)) * weight
            weights += weight
        total = total + loss / weights
    return total


def as_map(pooled: jax.Array) -> jax.Array:
    """(B, C) -> (B, 1, 1, C): `pooled_feat.unsqueeze(-1).unsqueeze(-1)` in NHWC."""
    return pooled[:, None, None, :]


class ReviewKD(Method):
    display_name = "ReviewKD"
    uses_teacher = True
    # mdistiller's engine/cfg.py CFG.REVIEWKD: WARMUP_EPOCHS 20, STU_PREACT False, the mid channels' cap 512
    # (hard-coded in its ReviewKD.__init__); REVIEWKD_WEIGHT (5 in configs/cifar100/reviewkd.yaml) is loss.beta
    defaults = {"warmup": 20, "student_preact": False, "max_mid_channels": 512}
    specs = {"warmup": positive_int, "student_preact": flag, "max_mid_channels": positive_int}

    def levels(self, student, teacher):
        """(student maps deepest first, teacher maps shallowest first): stage outputs and pooled vector."""
        stages = student.preact_features if self.settings["student_preact"] else student.features
        student_maps = [as_map(student.pooled), *reversed(stages)]
        teacher_maps = [*teacher.preact_features, as_map(teacher.pooled)]
        return student_maps, teacher_maps

    def module(self, student, teacher) -> ReviewChain:
        student_maps, teacher_maps = self.levels(student, teacher)
        deepest_first = teacher_maps[::-1]
        return ReviewChain(min(self.settings["max_mid_channels"], student_maps[0].shape[-1]),
                           tuple(t.shape[-1] for t in deepest_first), tuple(t.shape[2] for t in deepest_first))

    def module_inputs(self, student, teacher) -> tuple:
        return (self.levels(student, teacher)[0],)

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        outputs, batch_stats = self.apply_module_of(variables, student, teacher, train)
        hcl = hcl_loss(outputs, self.levels(student, teacher)[1])
        factor = epoch_warmup(batch.epoch, self.settings["warmup"])
        return TermOutput(factor * hcl, metrics={"hcl": hcl, "warmup": factor}, batch_stats=batch_stats)
