"""VID: variational information distillation (Ahn et al., CVPR 2019), as RepDistiller's `distiller_zoo/VID.py`
`VIDLoss` and `train_student.py` run it on every stage output, feat[1:-1] (docs/methods.md, "What each term is":
VID; recipe gamma 1, alpha 0, beta 1).

For each stage pair a regressor (three bias-free 1x1 convs, student channels -> teacher channels -> teacher
channels -> teacher channels, ReLU between) predicts the mean of a Gaussian over the teacher's feature, with a
learned per-channel variance softplus(log_scale) + eps (log_scale starts at softplus^-1(init_pred_var - eps));
the stage's loss is the mean over B, H, W, C of 0.5 ((mu - t)^2 / var + log var), and the term their sum.
Regressors and log_scales are trained (and weight-decayed) with the student, as RepDistiller's trainable_list.
Maps of different sizes are pooled to the smaller first; with unequal stage counts the first min(S, T) stages
are paired (RepDistiller's `zip`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.config.specs import positive_float
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, TermOutput, nested
from jaxkd.methods.pooling import pool_to_common_size
from jaxkd.models.torch_layers import conv


class VariationalRegressor(nn.Module):
    """One `VIDLoss`: `regressor` (conv1, conv2, conv3: PyTorch's default Conv2d init, U(+-1/sqrt(in channels)))
    and `log_scale` (teacher channels). Returns the (mean, variance) of the teacher feature given the student's.
    Params `conv{1,2,3}/kernel` = `regressor.{0,2,4}.weight`.transpose(2, 3, 1, 0), `log_scale`."""

    channels: int  # the teacher's
    init_pred_var: float
    eps: float

    @nn.compact
    def __call__(self, x):
        x = nn.relu(conv(x, self.channels, 1, "conv1"))
        x = nn.relu(conv(x, self.channels, 1, "conv2"))
        mean = conv(x, self.channels, 1, "conv3")
        # np.log(np.exp(init_pred_var - eps) - 1.0), float64, stored as float32 as torch.ones(...) makes it
        start = np.float32(np.log(np.exp(self.init_pred_var - self.eps) - 1.0))
        log_scale = self.param("log_scale", nn.initializers.constant(start), (self.channels,), jnp.float32)
        variance = jnp.log(1.0 + jnp.exp(log_scale)) + self.eps  # the reference's softplus, term by term
        return mean, variance


class Regressors(nn.Module):
    """VID's trainable modules: one `VariationalRegressor` per stage pair, `stage1`, `stage2`, ...; called on the
    paired student maps pooled to the teacher's size, returns each pair's (mean, variance)."""

    channels: tuple  # the teacher's, per stage
    init_pred_var: float
    eps: float

    @nn.compact
    def __call__(self, student_maps, train: bool = False):  # no BN: `train` changes nothing
        return [VariationalRegressor(c, self.init_pred_var, self.eps, name=f"stage{i + 1}")(x)
                for i, (c, x) in enumerate(zip(self.channels, student_maps))]



def vid_loss(mean, variance, teacher_feature) -> jax.Array:
    """`VIDLoss.forward`: the negative log-likelihood of the teacher feature, averaged over every element."""
    return jnp.mean(0.5 * (jnp.square(mean - teacher_feature) / variance + jnp.log(variance)))


class VID(Method):
    display_name = "VID"
    uses_teacher = True
    defaults = {"init_pred_var": 5.0, "eps": 1e-5}  # VIDLoss(init_pred_var=5.0, eps=1e-5)
    specs = {"init_pred_var": positive_float, "eps": positive_float}

    def __init__(self, name, config=None):
        super().__init__(name, config)
        if self.settings["init_pred_var"] <= self.settings["eps"]:  # the variance starts at init_pred_var - eps
            raise UserError(f"--config.vid.init_pred_var={self.settings['init_pred_var']:g}: must exceed "
                            f"vid.eps ({self.settings['eps']:g})")

    def pooled_pairs(self, student, teacher) -> list:
        """(student map, teacher map) per stage pair, the larger pooled to the smaller's size."""
        return [pool_to_common_size(s, t) for s, t in zip(student.features, teacher.features)]

    def module(self, student, teacher) -> Regressors:
        """Sized by the teacher's channels."""
        return Regressors(tuple(t.shape[-1] for _, t in zip(student.features, teacher.features)),
                          self.settings["init_pred_var"], self.settings["eps"])

    def module_inputs(self, student, teacher) -> tuple:
        return ([s for s, _ in self.pooled_pairs(student, teacher)],)

    def init_variables(self, module, rng, inputs) -> dict:
        """Regressor i from `fold_in(rng, i)`, the keys VID's runs have always used."""
        return nested({f"stage{i + 1}": VariationalRegressor(c, module.init_pred_var, module.eps).init(
            jax.random.fold_in(rng, i), x) for i, (c, x) in enumerate(zip(module.channels, inputs[0]))}, ("params",))

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        predictions, _ = self.apply_module_of(variables, student, teacher, train)
        losses = [vid_loss(mean, variance, t) for (mean, variance), (_, t)
                  in zip(predictions, self.pooled_pairs(student, teacher))]
        return TermOutput(sum(losses), metrics={f"stage{i + 1}": loss for i, loss in enumerate(losses)})
