"""The two losses every recipe composes (RepDistiller: gamma * CE + alpha * KD + beta * method term), and logit
standardization (Sun et al. 2024), an option of the logit losses (the KD term here, DKD's term)."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`nn.CrossEntropyLoss()`: mean over the batch of -log softmax(logits)[label]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


LOGIT_STANDARDIZATION_EPS = 1e-7  # logit-standardization-KD's `normalize`: (z - mean) / (1e-7 + std)


def unbiased_std(x: jax.Array, axis: int = -1) -> jax.Array:
    """`torch.std(x, dim=axis, keepdim=True)`: the unbiased (N - 1) estimator, with PyTorch's gradient at a
    constant row (0 where the std is 0, where the plain sqrt's would be infinite and the product NaN)."""
    centred = x - jnp.mean(x, axis=axis, keepdims=True)
    variance = jnp.sum(jnp.square(centred), axis=axis, keepdims=True) / (x.shape[axis] - 1)
    positive = variance > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)


def standardize_logits(logits: jax.Array) -> jax.Array:
    """Logit standardization (sunshangquan/logit-standardization-KD, `mdistiller/distillers/KD.py`
    `normalize`): each row z-scored, (z - mean) / (1e-7 + unbiased std), before the temperature. A constant row
    becomes all zeros (a uniform softmax)."""
    logits = logits.astype(jnp.float32)
    return (logits - jnp.mean(logits, axis=-1, keepdims=True)) / (LOGIT_STANDARDIZATION_EPS + unbiased_std(logits))


def kd_divergence(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                  logit_standardization: bool = False) -> jax.Array:
    """Hinton's KD as RepDistiller's `DistillKL`: sum over batch and classes of KL(p_t || p_s) at temperature T,
    divided by the batch size, times T^2. p_t is a softmax (a class with p_t = 0 contributes 0); the teacher
    gets no gradient. `logit_standardization`: both sides' logits z-scored first (`standardize_logits`), as
    logit-standardization-KD's `kd_loss(..., logit_stand=True)`, whose T is then its base temperature."""
    if logit_standardization:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0)
    return jnp.sum(kl) / student_logits.shape[0] * temperature**2
