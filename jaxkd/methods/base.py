"""The method interface: what a distillation method adds to the student's training.

The engine computes, every step, `gamma * CE(student) + alpha * KD(student, teacher) + beta * term`
(RepDistiller's -r/-a/-b). A method supplies `term` and whatever it needs:
- trainable modules (FitNets' regressor, CRD's embeddings, BYOT's heads, DML's peers): their variables are
  returned by `init`, trained and weight-decayed with the student, checkpointed with it;
- non-trainable device state (CRD's memory banks): returned by `init`, threaded through every step, donated
  and checkpointed with the train state;
- whether it needs a pretrained teacher (`uses_teacher`), whose eval-mode outputs the engine then computes.
A new method is one file in `jaxkd/methods/` registered in `jaxkd/methods/__init__.py`; the engine does not
change.
"""

from typing import Any, NamedTuple

import jax

from jaxkd.errors import UserError
from jaxkd.models import ModelOutput


def section_over_defaults(config, section_name: str, defaults: dict) -> dict:
    """A method's settings: `config.<section_name>` over `defaults` (a config without the section gets the
    defaults); a key the method does not know is a one-line UserError."""
    section = config.get(section_name, None) if config is not None else None
    settings = dict(defaults)
    if section is not None:
        unknown = sorted(set(section.keys()) - set(defaults))
        if unknown:
            raise UserError(f"unknown config.{section_name} keys {unknown}; known: {sorted(defaults)}")
        settings.update({name: section[name] for name in section.keys()})
    return settings


class Batch(NamedTuple):
    """One training batch as the step sees it, after augmentation (and SaliencyMix, when on)."""

    images: jax.Array  # float32 NHWC, the same images the student and the teacher see
    labels: jax.Array  # int32 (B,)
    index: jax.Array  # int32 (B,): dataset indices of the examples (CRD's memory bank rows)
    rng: jax.Array  # a key for the method's own sampling this step
    # SaliencyMix: example i shows images[i] with a box pasted from example partners[i]; lam is the fraction of
    # the original kept. Without mixing: None and 1.0.
    partners: jax.Array | None = None
    lam: jax.Array | float = 1.0


class Probe(NamedTuple):
    """What `init` may use to size its modules and state: outputs on a sample batch, and the dataset."""

    student: ModelOutput
    teacher: ModelOutput | None
    batch: Batch
    train_labels: Any  # numpy int array (N,): every training label, for per-class sampling tables
    num_classes: int


class MethodInit(NamedTuple):
    variables: dict  # {"params": ..., "batch_stats": ...} of the method's trainable modules ({} if none)
    state: Any  # non-trainable device state (a pytree; {} if none)


class TermOutput(NamedTuple):
    term: jax.Array  # the scalar weighted by beta
    batch_stats: dict  # updated batch statistics of the method's modules (those given if unchanged)
    state: Any  # updated method state
    metrics: dict  # extra scalars to log (names without the method prefix)


class Method:
    """Base class: a method with no term, no modules and no state (the plain baseline)."""

    name = "none"
    uses_teacher = False
    metric_names: tuple[str, ...] = ()  # the keys of TermOutput.metrics, logged as "<name>_<key>"

    def __init__(self, config):
        self.config = config

    def init(self, rng: jax.Array, probe: Probe) -> MethodInit:
        return MethodInit({}, {})

    def term(self, variables: dict, state, student: ModelOutput, teacher: ModelOutput | None, batch: Batch,
             train: bool) -> TermOutput:
        return TermOutput(jax.numpy.zeros((), jax.numpy.float32), variables.get("batch_stats", {}), state, {})

    def eval_logits(self, variables: dict, student: ModelOutput, images: jax.Array) -> dict:
        """Extra classifiers to evaluate beside the student, name -> logits (B, classes), in eval mode (running
        statistics): DML's peers, BYOT's shallow heads. The engine reports each one's test accuracy, and with
        any present also the ensemble's (the mean of all softmaxes, the student's included). Pure and jittable;
        `images` are the normalized eval images the student saw."""
        return {}

    def exports(self, variables: dict) -> dict:
        """Extra models to export at the end of training, name -> (architecture, Flax variables of the seed
        family): written as `{name}.pth` (seed layout) and `{name}/` (model checkpoint) in the workdir, beside
        the student's `student.pth` and `model/`. DML's peers."""
        return {}
