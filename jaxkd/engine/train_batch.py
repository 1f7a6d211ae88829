"""The batch of one step, gathered and augmented on the device: shared by the training step (`jaxkd.engine.step`)
and the init stage's (`jaxkd.engine.init_stage`), so that both see the data the same way."""

import jax

from jaxkd.data import batch_indices, strong_augment
from jaxkd.methods.base import Batch


def prepare_batch(setup, key, step, permutation, images, labels, index, batch_size: int, batch_sharding) -> Batch:
    """Batch `step % steps_per_epoch` of the epoch whose order is `permutation` (`batch_size` examples: the run's,
    or an epoch's partial last batch), augmented by `setup.pipeline` with keys from fold_in(key, step) as a
    training step's are (crop, flip, SaliencyMix when on, normalization), and for a method with `strong_view`
    its strong view (`jaxkd.data.strong_augment`)."""
    pipeline, steps_per_epoch = setup.pipeline, setup.steps_per_epoch
    indices = jax.lax.with_sharding_constraint(
        batch_indices(permutation, step % steps_per_epoch, setup.config.batch_size, batch_size), batch_sharding)
    step_key = jax.random.fold_in(key, step)
    augment_rng, method_rng, mix_rng = jax.random.split(step_key, 3)
    pixels, partners, lam = pipeline.mix(mix_rng, pipeline.crop_flip(augment_rng, images[indices]))
    strong_images = None
    if setup.method.strong_view:  # its own key, so that every other key (and method) is as without it
        strong_images = jax.lax.with_sharding_constraint(pipeline.normalize(strong_augment.strong_view(
            jax.random.fold_in(step_key, strong_augment.KEY_STREAM), images[indices], pipeline.padding)),
            batch_sharding)
    return Batch(jax.lax.with_sharding_constraint(pipeline.normalize(pixels), batch_sharding),
                 jax.lax.with_sharding_constraint(labels[indices], batch_sharding), index[indices], method_rng,
                 partners, lam, epoch=step // steps_per_epoch + 1, strong_images=strong_images)
