"""The method interface: what a distillation method adds to the student's training.

The engine computes, every step, `gamma * CE(student) + alpha * KD(student, teacher) + beta * term`
(RepDistiller's -r/-a/-b). A method supplies `term` and whatever it needs:
- settings: `defaults`, its config section's keys and RepDistiller's values, and `specs`, what each accepts
  (checked as the method is made); `self.settings` is `config.<name>` over them (a config sets only what
  differs);
- trainable modules (FitNets' regressor, CRD's embeddings, BYOT's heads, DML's peers): one Flax module declared
  by `module`, called on `module_inputs`; the base initializes it (`init`) and applies it (`apply_module_of`,
  with its batch statistics); its variables are trained and weight-decayed with the student, checkpointed with it;
- non-trainable device state (CRD's memory banks): returned by `init`, threaded through every step, donated
  and checkpointed with the train state;
- whether it needs a pretrained teacher (`uses_teacher`), whose eval-mode outputs the engine then computes and
  hands to the method without gradient. The student's and the teacher's outputs arrive in float32
  (`float32_outputs`), whatever the models' compute dtype;
- `display_name`, how tables and reports name it.
The metrics it logs are the keys of `TermOutput.metrics`, found once by `initialize` (no compute). A new
method is one file in `jaxkd/methods/` and one line in the registry, `jaxkd/methods/__init__.py`
(docs/methods.md, "Adding a method").
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import check_settings
from jaxkd.errors import UserError
from jaxkd.models import ModelOutput


def section_over_defaults(config, section_name: str, defaults: dict) -> dict:
    """`config.<section_name>` over `defaults` (a config without the section gets the defaults); a key not in
    `defaults` is a one-line UserError naming the known keys. An int where the default is a float counts as
    that float (`alpha = 1`)."""
    section = config.get(section_name, None) if config is not None else None
    settings = dict(defaults)
    if section is not None:
        unknown = sorted(set(section.keys()) - set(defaults))
        if unknown:
            raise UserError(f"unknown config.{section_name} keys {unknown}; known: {sorted(defaults)}")
        settings.update({name: section[name] for name in section.keys()})
    return {name: float(value) if isinstance(defaults[name], float) and isinstance(value, int) else value
            for name, value in settings.items()}


def apply_module(module, variables: dict, *args, train: bool, **kwargs):
    """(output, batch_stats) of a Flax module taking `train`: in train mode with batch statistics, returning
    the updated running averages; in eval mode with the running statistics, returned unchanged."""
    if train:
        output, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"], **kwargs)
        return output, updates.get("batch_stats", {})
    return module.apply(variables, *args, train=False, **kwargs), variables.get("batch_stats", {})


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
    # The 1-based epoch of this step (mdistiller's `epoch`, for DKD's and ReviewKD's linear warm-ups), int32,
    # traced: computed in the step from the step number, so no recompile and no host sync.
    epoch: jax.Array | int = 1
    # A method with `strong_view` (MLKD): a second, strongly augmented view of the same examples (normalized like
    # `images`), and the student's (train mode, after its pass on `images`) and the teacher's outputs on it, in
    # float32, filled in by the engine's update. None for every other method.
    strong_images: jax.Array | None = None
    strong_student: ModelOutput | None = None
    strong_teacher: ModelOutput | None = None


def float32_outputs(output: ModelOutput | None) -> ModelOutput | None:
    """`output` with every array in float32: the one cast of a model's outputs (computed in `config.dtype`) as the
    engine hands them to a method, so that every term computes in float32."""
    if output is None:
        return None
    return jax.tree.map(lambda x: x.astype(jnp.float32), output)


def epoch_warmup(epoch, warmup_epochs: float) -> jax.Array:
    """mdistiller's linear warm-up of a term, `min(epoch / warmup, 1.0)`, for a (traced) 1-based `Batch.epoch`."""
    return jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0)


def label_mixed(per_label, batch: Batch):
    """`per_label(labels)`, per-example losses of the batch's labels (an array or a tuple of them), under
    SaliencyMix mixed with those of the partners' labels as the CE mixes them: lam * own + (1 - lam) * partner's
    (DKD, CTKD's DKD base, SDD)."""
    own = per_label(batch.labels)
    if batch.partners is None:
        return own
    lam = jnp.asarray(batch.lam, jnp.float32)
    partners = per_label(batch.labels[batch.partners])
    return jax.tree.map(lambda a, b: lam * a + (1.0 - lam) * b, own, partners)


class Probe(NamedTuple):
    """What `init` may use to size its modules and state: outputs on a sample batch, the dataset, and the
    teacher itself (OFD's margins come from its BN parameters)."""

    student: ModelOutput
    teacher: ModelOutput | None
    batch: Batch
    train_labels: Any  # numpy int array (N,): every training label, for per-class sampling tables
    num_classes: int
    teacher_model: Any = None  # the teacher's Flax module (None without a teacher)
    teacher_variables: Any = None  # its variables, {"params", "batch_stats"} (traced inside the initial state)


def check_classifier_outputs(method_name: str, probe: Probe) -> None:
    """A one-line UserError unless both models give their last feature map and classifier (`ModelOutput.pooled_map`,
    `classifier_kernel`) and have the same classes: what SDD and CAT-KD read."""
    for side, out in (("student", probe.student), ("teacher", probe.teacher)):
        if out.pooled_map is None or out.classifier_kernel is None:
            raise UserError(f"{method_name}: the {side}'s model returns no last feature map and classifier")
    if probe.student.logits.shape[-1] != probe.teacher.logits.shape[-1]:
        raise UserError(f"{method_name}: the student has {probe.student.logits.shape[-1]} classes and the teacher "
                        f"{probe.teacher.logits.shape[-1]}: they must be the same")


class MethodInit(NamedTuple):
    variables: dict = {}  # {"params": ..., "batch_stats": ...} of the method's trainable modules
    state: Any = {}  # non-trainable device state (a pytree)


class TermOutput(NamedTuple):
    """What `term` returns. Batch statistics and state left None are unchanged (`completed` fills them in)."""

    term: jax.Array  # the scalar weighted by beta
    metrics: dict = {}  # extra scalars to log, as "<method name>_<key>"
    batch_stats: dict | None = None  # updated batch statistics of the method's modules
    state: Any = None  # updated method state

    def completed(self, variables: dict, state) -> "TermOutput":
        """This output with the batch statistics and state it left unchanged taken from the inputs."""
        return self._replace(batch_stats=variables.get("batch_stats", {}) if self.batch_stats is None
                             else self.batch_stats, state=state if self.state is None else self.state)


INIT_MODULES = "init_modules"  # the key of the method state under which a method keeps its init-stage modules


class InitStage(NamedTuple):
    """An init stage a method declares (RepDistiller's `helper/pretrain.py` `init`, docs/methods.md "The init
    stage"): before normal training, `epochs` passes over the training data (the run's pipeline and batch size)
    train, on `Method.init_loss` alone, the method's init modules (`state[INIT_MODULES]`, frozen afterwards) and,
    with `student_features`, the student's feature modules (RepDistiller's `get_feat_modules`), by SGD with the
    run's momentum and weight decay at the constant `learning_rate`."""

    epochs: int
    student_features: bool
    learning_rate: float


def nested(children: dict, collections: tuple = ("params", "batch_stats")) -> dict:
    """The Flax variables of a module whose children `children` (name -> the child's own variables) are: each
    collection in `collections` holds {name: the child's tree}, as Flax nests them. For a module whose `init`
    gives each child its own key (the keys runs have always used), so that a seed starts where it did."""
    return {collection: {name: variables[collection] for name, variables in children.items()
                         if collection in variables} for collection in collections}


class Method:
    """Base class: a method with no term, no modules and no state (the plain baseline, "none").

    `name` is the method's name in the registry (`config.method`), the name of its config section and the
    prefix of its metrics."""

    display_name = "Baseline"  # how tables and reports name the method (its paper's or RepDistiller's spelling)
    uses_teacher = False
    # whether the engine runs the teacher in train mode (BN on batch statistics, its running statistics left
    # unchanged) for the term's outputs; eval mode, False, for every method but OFD (mdistiller's OFD.train)
    teacher_train_mode = False
    # whether the engine makes a strongly augmented second view of each batch (`jaxkd.data.strong_augment`) and
    # hands the term both models' outputs on it (`Batch.strong_student`, `Batch.strong_teacher`): MLKD
    strong_view = False
    defaults: dict = {}  # config.<name>'s keys and default values
    # config.<name>'s keys -> what each accepts (jaxkd.config.checks: positive_int, fraction, one_of(...), ...),
    # checked as the method is made, before any work
    specs: dict = {}

    # config.<name>'s keys that moved elsewhere -> their new key (refused with one line naming it)
    moved_settings: dict = {}

    def __init__(self, name: str, config=None):
        self.name = name
        self.config = config
        section = config.get(name, None) if config is not None else None
        for key, new_key in self.moved_settings.items():
            if section is not None and key in section:
                raise UserError(f"config.{name}.{key} is now config.{new_key}")
        self.settings = section_over_defaults(config, name, self.defaults)
        check_settings(name, self.settings, self.specs)
        self.metric_names: tuple[str, ...] | None = None  # set by `initialize`

    def initialize(self, rng: jax.Array, probe: Probe) -> MethodInit:
        """`init`, and `metric_names`: the keys of the metrics `term` returns on the probe (`jax.eval_shape`,
        which traces `term` without computing it)."""
        method_init = self.init(rng, probe)
        output = jax.eval_shape(
            lambda variables, state: self.term(variables, state, probe.student, probe.teacher, probe.batch, True),
            method_init.variables, method_init.state)
        self.metric_names = tuple(output.metrics)
        return method_init

    @property
    def logit_standardization(self) -> bool:
        """`config.loss.logit_standardization` (Sun et al. 2024): whether terms on logits z-score both sides'
        logits first (`jaxkd.engine.losses.standardize_logits`). The one setting for the KD term and every logit
        method (DKD); False without a config or in one that predates the key."""
        loss = self.config.get("loss", None) if self.config is not None else None
        return bool(loss.get("logit_standardization", False)) if loss is not None else False

    @property
    def networks(self) -> tuple:
        """The networks this method runs besides the student and the teacher, as Flax modules (DML's peers):
        the engine compiles the step with the CPU options they need (`jaxkd.engine.compile_options`). Empty by
        default."""
        return ()

    def module(self, student: ModelOutput, teacher: ModelOutput | None) -> nn.Module | None:
        """The method's trainable modules as one Flax module, sized from the models' outputs (so that `init`
        and `term` build the same one), or None: no trainable modules. Its `__call__` takes
        `*module_inputs(student, teacher)` and `train` (batch statistics in train mode)."""
        return None

    def module_inputs(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple:
        """The arguments `module` is called with: by default the student's outputs."""
        return (student,)

    def init(self, rng: jax.Array, probe: Probe) -> MethodInit:
        """The module's variables (`module.init` on the probe, in eval mode), and no state. A method with
        state or init-stage modules adds them. Jitted: Flax's op-by-op init would compile each of the module's
        ops on its own (inside the engine's jitted initial state it is inlined)."""
        module = self.module(probe.student, probe.teacher)
        if module is None:
            return MethodInit()
        init = jax.jit(lambda key, inputs: self.init_variables(module, key, inputs))
        return MethodInit(dict(init(rng, self.module_inputs(probe.student, probe.teacher))))

    def init_variables(self, module: nn.Module, rng: jax.Array, inputs: tuple) -> dict:
        """The module's initial variables: `module.init(rng, *inputs, train=False)`. A method whose runs have
        always given each of the module's children a key of its own overrides it with those keys (`nested`), so
        that a seed starts where it always did."""
        return module.init(rng, *inputs, train=False)

    def apply_module_of(self, variables: dict, student: ModelOutput, teacher: ModelOutput | None, train: bool):
        """(the module's output on `module_inputs`, its batch statistics: updated in train mode)."""
        return apply_module(self.module(student, teacher), variables, *self.module_inputs(student, teacher),
                            train=train)

    def term(self, variables: dict, state, student: ModelOutput, teacher: ModelOutput | None, batch: Batch,
             train: bool) -> TermOutput:
        return TermOutput(jnp.zeros((), jnp.float32))

    def init_stage(self, config) -> InitStage | None:
        """The method's init stage for the run's `config`, or None (no init stage: most methods)."""
        return None

    # whether `state_sharding` lays the state out otherwise than replicated (then the engine pins the step's
    # output state to it instead of replicating it)
    shards_state = False

    def state_sharding(self, mesh: jax.sharding.Mesh, state):
        """How the method state sits on the mesh's devices: a pytree prefix of shardings of `state` (its arrays
        or their shapes). Replicated by default; CRD's sharded banks split their rows over the `data` axis."""
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def check_saved_state(self, saved: dict, num_examples: int) -> None:
        """One UserError for a checkpoint's method state that this run cannot restore (`saved`: its arrays'
        metadata, shape and sharding, `jaxkd.io.run_checkpoint.saved_state_metadata`), read before anything
        compiles; `num_examples`: the training examples. Nothing by default; CRD's sharded banks, padded for the
        devices they were written on, refuse another padding."""

    def init_loss(self, modules: dict, student: ModelOutput | None, teacher: ModelOutput, batch: Batch
                  ) -> tuple[jax.Array, dict]:
        """(the init stage's loss, the init modules' updated batch statistics), the modules in train mode;
        `modules` are `state[INIT_MODULES]`'s variables; `student` is None when the stage does not train the
        student's feature modules (RepDistiller runs it but does not use it)."""
        raise NotImplementedError(f"method {self.name!r} declares no init stage")

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
