"""The run's build: the config checked, the teacher and data loaded, the models, method, optimizer and data
pipeline made (`build` -> `Setup`), before anything is compiled."""

import dataclasses

import jax
import ml_collections
import optax

from jaxkd.config.checks import check_run_config
from jaxkd.data import load_split
from jaxkd.data.pipeline import DataPipeline
from jaxkd.data.streaming.run_data import StreamingData, is_streaming
from jaxkd.engine import distributed
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.errors import UserError
from jaxkd.io.model_reference import open_model
from jaxkd.io.paths import input_exists
from jaxkd.io.wandb_log import check_wandb_settings
from jaxkd.methods import Method, get_method
from jaxkd.models import COMPUTE_DTYPES, get_model

METRIC_NAMES = ("loss", "ce", "kd", "term", "correct")  # summed on the device between two fetches


@dataclasses.dataclass
class Teacher:
    model: object
    variables: dict
    arch: str


@dataclasses.dataclass
class Setup:
    """Everything `train_and_evaluate` builds from the config before the first compile, and the config."""

    student: object
    method: Method
    teacher: Teacher | None
    optimizer: optax.GradientTransformation
    train: object  # jaxkd.data.Split
    test: object
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    config: ml_collections.ConfigDict  # the run's
    pipeline: DataPipeline = DataPipeline()  # the seed's: reflect padding, its constants, full batches only
    last_batch_size: int = 0  # of each epoch's last step, when the pipeline keeps a partial batch; 0: none
    # The streaming path's sources and loader (data.source "imagefolder"): then `train` and `test` are its
    # sources, read from the host batch by batch; None: the splits are arrays held on the device.
    stream: StreamingData | None = None

    @property
    def partial_last_batch(self) -> bool:
        """Whether each epoch ends with a smaller batch (its own compiled step): RepDistiller's drop_last=False."""
        return self.last_batch_size > 0

    @property
    def models(self) -> tuple:
        """The Flax modules the train programs run (their compiler options): the student, the teacher, and the
        method's own networks (DML's peers)."""
        return self.evaluated_models + (() if self.teacher is None else (self.teacher.model,))

    @property
    def evaluated_models(self) -> tuple:
        """The Flax modules the evaluation step runs (its compiler options): the student and the method's own
        networks, not the teacher."""
        return (self.student,) + tuple(self.method.networks)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What the step sums on the device: the engine's metrics, then the method's own (the keys of its
        term's metrics, found by `Method.initialize` in `create_train_state`)."""
        return METRIC_NAMES + tuple(f"{self.method.name}_{name}" for name in self.method.metric_names)

    def first_examples(self):
        """(images, labels, index) of the first `batch_size` training examples: the initial state's probe."""
        count = self.config.batch_size
        if self.stream is not None:
            return self.stream.first_examples(count)
        return self.train.images[:count], self.train.labels[:count], self.train.index[:count]

    @property
    def train_labels(self):
        """Every training label, for the method's probe (`jaxkd.methods.Probe.train_labels`)."""
        return self.train.labels if self.stream is None else self.stream.labels

    @property
    def platform(self) -> str:
        """The devices' platform: "cpu", "gpu" or "tpu"."""
        return self.mesh.devices.flat[0].platform


def say(text: str) -> None:
    """A message for the user, printed once (by process 0)."""
    distributed.print_once(text, flush=True)


def check_config(config, mesh) -> None:
    """Config mistakes that can be seen without loading anything, as one clear line each: every value's type
    and range, and settings that cannot take effect (jaxkd.config.checks; the method's own section is checked
    by `get_method`); those a recipe carries unused are listed once."""
    for note in check_run_config(config):
        say(f"unused: {note}")
    if config.batch_size % mesh.devices.size:
        raise UserError(f"batch_size {config.batch_size} is not divisible by the {mesh.devices.size} devices")
    if config.get("wandb"):
        check_wandb_settings(config.wandb)  # the client, when a mode other than disabled asks for it


def check_teacher_path(config, method: Method) -> None:
    """A teacher the method needs and the config does not name, or names but is not there: one line, before
    the data is loaded."""
    if not method.uses_teacher:
        return
    if not config.teacher.checkpoint:
        raise UserError(f"method {method.name!r} needs a teacher: set --config.teacher.checkpoint to a .pth, "
                        f"a model checkpoint directory or a training workdir")
    if not input_exists(config.teacher.checkpoint, f"--config.teacher.checkpoint {config.teacher.checkpoint}"):
        raise UserError(f"--config.teacher.checkpoint {config.teacher.checkpoint}: no such file or directory")


def load_teacher(config, method: Method) -> Teacher | None:
    """The configured teacher (None for a method without one), its model built for the classes it has
    (`build` checks them against the data's)."""
    if not method.uses_teacher:
        return None
    check_teacher_path(config, method)
    try:
        opened = open_model(config.teacher.checkpoint, config.teacher.arch or None,
                            dtype=COMPUTE_DTYPES[config.dtype])
    except UserError as error:
        if not config.teacher.arch:
            raise
        raise UserError(f"{error}; the config names teacher.arch={config.teacher.arch}: pass "
                        f"--config.teacher.arch='' to take the architecture from the file") from None
    check_teacher_normalization(config, opened.normalization)
    return Teacher(opened.model, opened.variables, opened.arch)


def check_teacher_normalization(config, teacher_normalization: str) -> None:
    """One line for a teacher trained on ImageNet's mean/std (a torchvision-format file, or a run that said so)
    in a run that normalizes otherwise, or the reverse: both models see the run's inputs, and ImageNet's std is
    13-18% below CIFAR-100's (pytorch-kd's and RepDistiller's constants, 4e-4 apart, pass for each other)."""
    run_normalization = config.data.normalization
    if (teacher_normalization == "imagenet") == (run_normalization == "imagenet"):
        return
    raise UserError(f"the teacher {config.teacher.checkpoint} was trained on inputs normalized with the "
                    f"{teacher_normalization} mean/std, this run normalizes with the {run_normalization} ones: set "
                    f"--config.data.normalization={teacher_normalization} (a model trained otherwise: name its jaxkd "
                    f"workdir or model checkpoint, whose metadata gives its normalization)")


def build(config, devices=None, *, data=None, teacher: Teacher | None = None) -> Setup:
    """Loads data, teacher and method for `config` on `devices` (default: all). `data` = (train, test) splits
    and `teacher` replace what the config names (the bench's synthetic data and random teacher)."""
    mesh = data_mesh(None if devices is None else tuple(devices))
    check_config(config, mesh)
    method = get_method(config.method, config)
    if teacher is None:  # before the data: a teacher file that does not fit is refused without loading it
        teacher = load_teacher(config, method)
    stream = None
    if data is None and is_streaming(config):
        stream = _open_stream(config, method)
        data = stream.train, stream.test
    elif data is None:
        data_dir = config.data.data_dir or None
        data = tuple(load_split(config.data.source, split, data_dir, download=config.data.download,
                                digits_size=config.data.digits_size) for split in ("train", "test"))
    train, test = data
    if teacher is not None and teacher.model.num_classes != train.num_classes:
        raise UserError(f"the teacher {config.teacher.checkpoint} has {teacher.model.num_classes} classes, the "
                        f"dataset {train.num_classes}")
    pipeline = DataPipeline.from_config(config)
    spe = pipeline.steps_per_epoch(len(train), config.batch_size)
    if spe < 1 or len(train) < config.batch_size:
        raise UserError(f"batch_size {config.batch_size} exceeds the {len(train)} training examples")
    last_batch_size = pipeline.last_batch_size(len(train), config.batch_size)
    return Setup(student=get_model(config.model, train.num_classes, dtype=COMPUTE_DTYPES[config.dtype]),
                 method=method, teacher=teacher,
                 optimizer=make_optimizer(config, spe), train=train, test=test, steps_per_epoch=spe,
                 mesh=mesh, config=config, pipeline=pipeline,
                 last_batch_size=0 if last_batch_size == config.batch_size else last_batch_size, stream=stream)


def _open_stream(config, method: Method) -> StreamingData:
    """The streaming sources (their data checked), after one UserError for a run the streaming path cannot serve."""
    if method.init_stage(config) is not None:
        raise UserError(f"method {method.name!r} has an init stage, which the device-resident data only runs; "
                        f"data.source {config.data.source!r} cannot serve it")
    if config.batch_size % jax.process_count():
        raise UserError(f"batch_size {config.batch_size} must be a multiple of the {jax.process_count()} processes: "
                        f"each reads an equal slice of every batch")
    return StreamingData.from_config(config)
