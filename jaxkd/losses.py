"""The two losses every recipe composes (RepDistiller: gamma * CE + alpha * KD + beta * method term)."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`nn.CrossEntropyLoss()`: mean over the batch of -log softmax(logits)[label]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


def kd_divergence(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Hinton's KD as RepDistiller's `DistillKL`: sum over batch and classes of KL(p_t || p_s) at temperature T,
    divided by the batch size, times T^2. p_t is a softmax (a class with p_t = 0 contributes 0); the teacher
    gets no gradient."""
    log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0)
    return jnp.sum(kl) / student_logits.shape[0] * temperature**2
