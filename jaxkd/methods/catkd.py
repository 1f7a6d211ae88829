"""CAT-KD: class attention transfer based knowledge distillation (Guo et al., CVPR 2023), as the authors'
GzyAftermath/CAT-KD runs it on CIFAR-100 (`mdistiller/distillers/CAT_KD.py` `CAT_KD.forward_train`, `CAT_loss`,
`_Normalize`; the `*_test` models of `mdistiller/models/cifar/` that `tools/train.py` builds with `if_test`;
docs/methods.md, "What each term is": CAT-KD).

Each side's class activation maps are its classifier's weight applied as a bias-free 1x1 conv to the last feature
map (`ModelOutput.pooled_map`; the official `conv_test`, which takes the teacher's `fc.weight` and drops its
bias), adaptive-average-pooled to `resolution` x `resolution` (CAM_RESOLUTION); with `normalize` (IF_NORMALIZE)
each class's pooled map is L2-normalized over its cells (`F.normalize(dim=(2, 3))`, eps 1e-12); the term is the
mean squared difference over B x classes x cells (`F.mse_loss`). Maps of different sizes meet at the pooled
resolution; different channel counts each go through their own classifier; the classes must agree. The pooling
is done on the feature map before the classifier: the same numbers (both are linear), fewer channels to pool.

Not ported: the CAT-only experiments' options (IF_BINARIZE, IF_OnlyTransferPartialCAMs; onlyCAT is loss.gamma 0).
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import flag, positive_int
from jaxkd.methods.base import Method, TermOutput, check_classifier_outputs
from jaxkd.methods.pooling import adaptive_avg_pool2d

NORMALIZE_EPS = 1e-12  # F.normalize's eps


def class_activation_maps(feature_map: jax.Array, kernel: jax.Array, resolution: int) -> jax.Array:
    """(B, R, R, classes): the classifier's weight as a bias-free 1x1 conv on the NHWC map, pooled to R x R."""
    pooled = adaptive_avg_pool2d(feature_map, resolution, resolution)
    return jnp.einsum("bhwc,ck->bhwk", pooled, kernel, precision=jax.lax.Precision.HIGHEST)


def normalize_cells(maps: jax.Array) -> jax.Array:
    """Each (example, class) map divided by its L2 norm over the cells, at least eps (`F.normalize(dim=(2, 3))`)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(maps), axis=(1, 2), keepdims=True))
    return maps / jnp.maximum(norm, NORMALIZE_EPS)


def cat_loss(student_maps: jax.Array, teacher_maps: jax.Array, normalize: bool) -> jax.Array:
    """`CAT_loss` after the pooling: the mean squared difference of the (normalized) maps."""
    if normalize:
        student_maps, teacher_maps = normalize_cells(student_maps), normalize_cells(teacher_maps)
    return jnp.mean(jnp.square(student_maps - teacher_maps))


class CATKD(Method):
    display_name = "CAT-KD"
    uses_teacher = True
    # mdistiller/engine/cfg.py CFG.CAT_KD: CAM_RESOLUTION 2, IF_NORMALIZE True (its CAT_loss_weight, 400, is the
    # engine's loss.beta); configs/cifar100/CAT_KD/*.yaml set each pair's (configs/mdistiller.py)
    defaults = {"resolution": 2, "normalize": True}
    specs = {"resolution": positive_int, "normalize": flag}

    def init(self, rng, probe):
        check_classifier_outputs(self.name, probe)
        return super().init(rng, probe)

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        resolution = self.settings["resolution"]
        student_maps = class_activation_maps(student.pooled_map, student.classifier_kernel, resolution)
        teacher_maps = jax.lax.stop_gradient(
            class_activation_maps(teacher.pooled_map, teacher.classifier_kernel, resolution))
        return TermOutput(cat_loss(student_maps, teacher_maps, self.settings["normalize"]))
