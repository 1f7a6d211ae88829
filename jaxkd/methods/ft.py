"""FT: factor transfer (Kim et al., NeurIPS 2018, "Paraphrasing Complex Network"), as RepDistiller runs it
(`--distill factor`; `distiller_zoo/FT.py` `FactorTransfer`, `models/util.py` `Paraphraser` and `Translator`,
`train_student.py`, `helper/pretrain.py` `init`); docs/methods.md, "What each term is": FT.

- The `Paraphraser` (an autoencoder on the teacher's last stage output, RepDistiller's feat[-2]; no BN) trains
  in the init stage on the reconstruction MSE alone, at lr 0.01 for RepDistiller's CIFAR ResNets and WRNs
  (else the run's lr), then stays frozen.
- The `Translator` (3 conv-BN-LeakyReLU layers on the student's last stage output) trains with the student.
- The term: factors F = normalize(mean over channels of f^p1, flattened) of the translated student map and of
  the paraphraser's encoding of the teacher map (the larger pooled to the smaller's size first); the mean of
  |F_s - F_t|^p2 (p1 = 2, p2 = 1: the mean absolute difference).
"""


import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_int, positive_float
from jaxkd.methods.base import INIT_MODULES, InitStage, Method, MethodInit, TermOutput
from jaxkd.methods.pooling import adaptive_avg_pool2d
from jaxkd.models import canonical_name
from jaxkd.models.batchnorm import BatchNorm
from jaxkd.models.torch_layers import torch_uniform

# helper/pretrain.py: the students whose paraphraser trains at lr 0.01 (RepDistiller's CIFAR resnets, resnet8x4,
# resnet32x4 and WRNs; the seed's pre-activation resnets are WRNs of width 1 and count with them)
LOW_INIT_LR_PREFIXES = ("rd_resnet", "resnet", "wideresnet")
LOW_INIT_LR = 0.01
LEAKY_SLOPE = 0.1


def conv3x3(x, features: int, name: str, transposed: bool = False):
    """`nn.Conv2d(in, features, 3, 1, 1)` or `nn.ConvTranspose2d(in, features, 3, 1, 1)` with PyTorch's default
    init, U(+-1/sqrt(fan_in)) for weight and bias, fan_in being in*9 for a conv and features*9 for a transposed
    one (PyTorch reads it from the weight's dim 1). The transposed conv (stride 1, padding 1) is the conv of the
    spatially flipped kernel; its kernel is stored as PyTorch's (in, out, kH, kW) weight moved to (kH, kW, in, out)."""
    if not transposed:
        fan_in = x.shape[-1] * 9
        return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=torch_uniform(fan_in),
                       bias_init=torch_uniform(fan_in), name=name)(x)
    return TransposedConv3x3(features, name=name)(x)


class TransposedConv3x3(nn.Module):
    """`nn.ConvTranspose2d(in, features, kernel_size=3, stride=1, padding=1)`, NHWC."""

    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = self.features * 9
        kernel = self.param("kernel", torch_uniform(fan_in), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        y = jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class Paraphraser(nn.Module):
    """RepDistiller's `Paraphraser(t_shape, k, use_bn=False)`: encoder conv(C, C), conv(C, kC), conv(kC, kC),
    decoder transposed conv(kC, kC), (kC, C), (C, C), each followed by LeakyReLU(0.1). Returns (factor,
    reconstruction), or only the factor with `decode=False`."""

    rate: float = 0.5

    @nn.compact
    def __call__(self, x, decode: bool = True):
        channels, factor_channels = x.shape[-1], int(x.shape[-1] * self.rate)
        factor = x
        for i, features in enumerate((channels, factor_channels, factor_channels)):
            factor = nn.leaky_relu(conv3x3(factor, features, f"encoder{i}"), LEAKY_SLOPE)
        if not decode:
            return factor
        out = factor
        for i, features in enumerate((factor_channels, channels, channels)):
            out = nn.leaky_relu(conv3x3(out, features, f"decoder{i}", transposed=True), LEAKY_SLOPE)
        return factor, out


class Translator(nn.Module):
    """RepDistiller's `Translator(s_shape, t_shape, k, use_bn=True)`: conv(Cs, Cs), conv(Cs, k Ct),
    conv(k Ct, k Ct), each followed by BN and LeakyReLU(0.1)."""

    teacher_channels: int
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool):
        factor_channels = int(self.teacher_channels * self.rate)
        for i, features in enumerate((x.shape[-1], factor_channels, factor_channels)):
            x = BatchNorm(name=f"bn{i}")(conv3x3(x, features, f"conv{i}"), use_running_average=not train)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        return x


def factor(f, p1: float) -> jax.Array:
    """`F.normalize(f.pow(p1).mean(1).view(B, -1))`: the channel mean of f^p1, L2-normalized (eps 1e-12)."""
    x = jnp.mean(f ** p1, axis=-1).reshape(f.shape[0], -1)
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def factor_transfer_loss(factor_s, factor_t, p1: float, p2: float) -> jax.Array:
    """RepDistiller's `FactorTransfer.factor_loss`."""
    size = min(factor_s.shape[1], factor_t.shape[1])  # the larger pooled to the smaller's (H, H)
    if factor_s.shape[1] > size:
        factor_s = adaptive_avg_pool2d(factor_s, size, size)
    if factor_t.shape[1] > size:
        factor_t = adaptive_avg_pool2d(factor_t, size, size)
    difference = factor(factor_s, p1) - factor(factor_t, p1)
    return jnp.mean(jnp.abs(difference)) if p2 == 1 else jnp.mean(difference ** p2)


class FT(Method):
    display_name = "FT"
    uses_teacher = True
    # FactorTransfer's p1, p2; the paraphrase rate k of Paraphraser and Translator; RepDistiller's --init_epochs
    defaults = {"p1": 2.0, "p2": 1.0, "rate": 0.5, "init_epochs": 30}
    specs = {"p1": positive_float, "p2": positive_float, "rate": positive_float, "init_epochs": non_negative_int}

    def __init__(self, name, config=None):
        super().__init__(name, config)
        self.paraphraser = Paraphraser(self.settings["rate"])  # the init-stage module, in the method state

    def module(self, student, teacher) -> Translator:
        """The translator, trained with the student."""
        return Translator(teacher.features[-1].shape[-1], self.settings["rate"])

    def module_inputs(self, student, teacher) -> tuple:
        return (student.features[-1],)

    def init(self, rng, probe) -> MethodInit:
        """The translator from `split(rng)[1]` and the paraphraser from `split(rng)[0]` (the keys FT's runs have
        always used)."""
        paraphraser_rng, translator_rng = jax.random.split(rng)
        paraphraser = self.paraphraser.init(paraphraser_rng, probe.teacher.features[-1])
        return MethodInit(super().init(translator_rng, probe).variables,
                          {INIT_MODULES: {"params": paraphraser["params"], "batch_stats": {}}})

    def init_stage(self, config) -> InitStage:
        low = canonical_name(config.model).startswith(LOW_INIT_LR_PREFIXES)
        return InitStage(self.settings["init_epochs"], student_features=False,
                         learning_rate=LOW_INIT_LR if low else config.optimizer.lr)

    def init_loss(self, modules, student, teacher, batch):
        f_t = teacher.features[-1]
        _, reconstruction = self.paraphraser.apply({"params": modules["params"]}, f_t)
        return jnp.mean(jnp.square(reconstruction - f_t)), {}

    def term(self, variables, state, student, teacher, batch, train):
        factor_s, batch_stats = self.apply_module_of(variables, student, teacher, train)
        # the paraphraser is frozen after the init stage
        factor_t = jax.lax.stop_gradient(self.paraphraser.apply({"params": state[INIT_MODULES]["params"]},
                                                                teacher.features[-1],
                                                                decode=False))
        return TermOutput(factor_transfer_loss(factor_s, factor_t, self.settings["p1"], self.settings["p2"]),
                          batch_stats=batch_stats)
