"""BatchNorm with PyTorch's semantics, so that trained statistics export to exactly what PyTorch would hold.

Flax's `nn.BatchNorm` differs from `torch.nn.BatchNorm2d` in one way that matters for parity: it stores the
*biased* batch variance in its running average, while PyTorch stores the *unbiased* one (x n/(n-1), n = number
of values per channel). This module normalizes with the biased variance (as both do) and updates the running
variance with the unbiased one; momentum is PyTorch's 0.1 weight on the new batch, eps 1e-5. The variance is
computed in two passes (mean, then mean squared deviation), not as E[x^2] - E[x]^2, to avoid cancellation.

Statistics are reduced over every axis but the last, i.e. over the whole (global) batch: under a sharded `jit`
the reduction spans all devices, as one GPU would compute it.
"""

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` / `BatchNorm1d` (channels last) with PyTorch's running-statistics update."""

    momentum: float = 0.1  # weight of the new batch in the running statistics (PyTorch's convention)
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                count = x.size // features
                unbiased_var = var * (count / max(count - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased_var

        inv = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)
        return y
