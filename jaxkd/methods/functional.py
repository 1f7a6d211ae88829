"""PyTorch's `torch.nn.functional` operations that the method terms use, with PyTorch's numerics and gradients."""

import jax
import jax.numpy as jnp


def normalize(x: jax.Array, axis: int, eps: float = 1e-12) -> jax.Array:
    """`F.normalize(x, dim=axis)`: x / max(||x||_2, eps). Written sqrt(max(sum x^2, eps^2)), which has the same
    value and a finite gradient (0 through the norm below eps, as PyTorch's clamp) at x = 0."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))


def smooth_l1_loss(x: jax.Array, y: jax.Array, beta: float = 1.0) -> jax.Array:
    """`F.smooth_l1_loss(x, y)` (mean): 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere."""
    diff = jnp.abs(x - y)
    return jnp.mean(jnp.where(diff < beta, 0.5 * jnp.square(diff) / beta, diff - 0.5 * beta))
