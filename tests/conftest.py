"""Shared test helpers: randomized PyTorch reference models, layout conversions, small real training runs and
their comparison. Test files import helpers from here only, never from one another."""

import atexit
import os
import pickle
import shutil
import signal
import tempfile
# pytest reports an exception raised in a __del__ ("unraisable") through a hook that imports tracemalloc on first
# use. When the garbage collector runs such a __del__ while TFDS imports its modules under etils' lazy-import
# context, that first import runs inside the context and fails ("'LazyModule' object is not callable"), and the
# warning becomes a test failure (tests/test_data_streaming.py's TFDS test, once in CI). Imported here first, the
# hook only looks it up.
import tracemalloc  # noqa: F401
import zlib
from pathlib import Path

# One persistent XLA compilation cache for the session, set before JAX is imported so that the subprocesses the
# tests start share it too: the suite compiles many identical programs (a straight run and its resumed twin, the
# seeds of one table cell, the same student's evaluation step in every method's learning run), now each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxkd-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs too: there are many
# LAPACK custom calls (KDSVD's SVDs) run inside XLA's own threads: OpenBLAS's threads on top oversubscribe the
# two cores (a KDSVD term and its gradient at batch 16 took 0.42 s with them, 0.05-0.09 s without)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402  (after the cache settings above)
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import demo
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.engine.step import make_update
from jaxkd.engine.train_state import TrainState
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.methods import Batch, get_method
from jaxkd.models import ModelOutput, get_model
from jaxkd.pytorch.torch_models import get_torch_model


def randomized_torch_model(arch: str, num_classes: int = 100, seed: int = 0):
    """The PyTorch reference model with random weights and non-trivial BN parameters and running statistics
    (not 1/0), and a non-zero classifier bias, so that every tensor's mapping matters."""
    torch.manual_seed(seed)
    model = get_torch_model(arch, num_classes)
    randomize_batchnorm_and_bias(model, model.linear)
    return model


def save_random_teacher(path, arch: str = "resnet8", num_classes: int = 10, seed: int = 0):
    """Writes a freshly initialized PyTorch model of `arch` (seed layout) to `path`: a teacher file for runs
    that need one but not a trained one. Returns `path`."""
    torch.manual_seed(seed)
    torch.save(get_torch_model(arch, num_classes).state_dict(), path)
    return path


# The side of the digits the suite's runs train on: 16 (each 8x8 pixel repeated 2x2), a quarter of the compute of
# the default 32 for the same examples (docs/data.md); what the runs check does not depend on the size.
SMALL_DIGITS = 16


def on_digits(config, *, epochs: int, log_every_steps: int = 5, model: str = "resnet8"):
    """`config` (a recipe from configs/) made a small real run: `model` on scikit-learn's digits at 16x16
    (SMALL_DIGITS), 22 steps per epoch at batch 64 (full batches only, also for RepDistiller's recipes, which keep
    a partial 23rd: tests/test_data_pipeline_train.py), evaluated and checkpointed every epoch, no progress bar.
    Returns it."""
    config.data.source = "digits"
    config.data.digits_size = SMALL_DIGITS
    config.data.drop_last = True
    config.model = model
    config.epochs = epochs
    config.eval_every_epochs = config.checkpoint_every_epochs = 1
    config.log_every_steps = log_every_steps
    config.progress_bar = False
    return config


def stop_during_call(monkeypatch, call: int) -> None:
    """The train loop (and the init stage's) as if a SIGTERM arrived while its host call number `call` ran,
    after that call's stop check (init and train calls counted together); `monkeypatch.undo()` ends it."""
    from jaxkd.io.stop_request import StopRequest

    calls = {"count": 0}
    real_before_dispatch = StopRequest.before_dispatch

    def before_dispatch(self):
        calls["count"] += 1
        dispatch = real_before_dispatch(self)
        if calls["count"] == call:
            self._handle(signal.SIGTERM, None)
        return dispatch

    monkeypatch.setattr(StopRequest, "before_dispatch", before_dispatch)


def small_config(epochs=2):
    """resnet8 on digits, 22 steps per epoch: the engine's smallest real run."""
    return on_digits(demo.get_config("teacher"), epochs=epochs)


def final_params(workdir):
    """The variables of the student a run exported (`workdir/model`)."""
    return load_model_checkpoint(Path(workdir) / "model")[0]


def assert_bitwise_equal(a, b):
    """Two pytrees with the same leaves at the same paths (none missing or extra) and equal dtypes, shapes and
    values, bit for bit (exact resume)."""
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    paths_a, paths_b = ([jax.tree_util.keystr(path) for path, _ in leaves] for leaves in (leaves_a, leaves_b))
    assert paths_a == paths_b, f"leaves only in the first: {sorted(set(paths_a) - set(paths_b))}, only in the " \
                               f"second: {sorted(set(paths_b) - set(paths_a))}"
    for (path, x), (_, y) in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), jax.tree_util.keystr(path)


def randomize_batchnorm_and_bias(model: torch.nn.Module, classifier: torch.nn.Linear) -> None:
    """Gives every BatchNorm2d non-trivial parameters and running statistics and the classifier a bias."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
        classifier.bias.uniform_(-0.1, 0.1)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def logit_term_and_grad(method, student, teacher, batch=None):
    """(term, metrics, gradient w.r.t. the student's logits) of a method whose term reads only the logits, on
    (B, C) logits of student and teacher, in train mode, jitted: what a logit method's parity test compares."""
    batch = Batch(None, None, None, None) if batch is None else batch

    def term(z_s):
        out = method.term({}, {}, ModelOutput([], None, z_s), ModelOutput([], None, jnp.asarray(teacher)), batch,
                          True)
        return out.term, out.metrics

    (value, metrics), grad = jax.jit(jax.value_and_grad(term, has_aux=True))(jnp.asarray(student))
    return value, metrics, grad


def assert_close_scaled(actual, reference, rel: float, what: str = ""):
    """max |actual - reference| <= rel * max |reference|: the parity criterion of the converter tests."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} vs {reference.shape}"
    diff, scale = float(np.max(np.abs(actual - reference))), float(np.max(np.abs(reference)))
    assert diff <= rel * scale, f"{what}: max|diff| {diff:.3g} > {rel:g} * max|ref| {scale:.3g}"



# --- evaluation tests (test_evaluate, test_robustness, test_scale_out): PyTorch's eval transform and test data

BATCH = 64  # one batch size for all of them: the eval step compiles once per (model, batch size)
BLOCK = 7  # CIFAR-100-C images per severity here (10,000 in the release); not a multiple of BATCH
WRITTEN_CORRUPTIONS = ("brightness", "fog", "zoom_blur")
# torchvision's ToTensor + Normalize with the seed's constants, written out independently of jaxkd.
MEAN = torch.tensor([129.3 / 255, 124.07 / 255, 112.43 / 255], dtype=torch.float32)
STD = torch.tensor([68.17 / 255, 65.39 / 255, 70.42 / 255], dtype=torch.float32)
# RepDistiller's dataset/cifar100.py constants
REPDISTILLER_MEAN_STD = (torch.tensor([0.5071, 0.4867, 0.4408]), torch.tensor([0.2675, 0.2565, 0.2761]))


def torch_logits(model, images_uint8, mean_std=(MEAN, STD)) -> np.ndarray:
    mean, std = mean_std
    x = nchw(images_uint8).float().div(255)
    x = (x - mean[:, None, None]) / std[:, None, None]
    model.eval()
    with torch.no_grad():
        return model(x)[1].numpy()


def random_images(rng, n: int) -> np.ndarray:
    """Noise around a random colour, of random strength: a randomized network tells these apart better than
    uniform noise, which it maps to one class."""
    base = rng.integers(0, 256, (n, 1, 1, 3))
    strength = rng.uniform(0, 128, (n, 1, 1, 1))
    return np.clip(base + strength * rng.standard_normal((n, 32, 32, 3)), 0, 255).astype(np.uint8)


def spread_predictions(torch_model, images_uint8):
    """Re-centres the randomized model's classifier on `images` (bias -W mean, weights / std of the pooled
    features) so that its predictions spread over many classes instead of collapsing onto one."""
    pooled = []
    hook = torch_model.linear.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
    torch_logits(torch_model, images_uint8)
    hook.remove()
    mean, std = pooled[0].mean(0), pooled[0].std(0) + 1e-6
    with torch.no_grad():
        torch_model.linear.weight.div_(std)
        torch_model.linear.bias.copy_(-torch_model.linear.weight @ mean)
    return torch_model


def spread_model(num_classes: int, seed: int, images_uint8=None):
    """A randomized resnet8 whose predictions on `images` (default: random_images) are spread out."""
    images = random_images(np.random.default_rng(seed), 256) if images_uint8 is None else images_uint8
    return spread_predictions(randomized_torch_model("resnet8", num_classes, seed=seed), images)


def reference_counts(logits, labels) -> tuple[int, int, int]:
    """(top-1 correct, top-5 correct, near ties): a near tie is an example whose top-1 or top-5 decision turns
    on logits closer than 1e-4 x max|logit| (float32 CPU differences between frameworks are ~1e-6 of that)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = int(np.sum(order[:, 0] == labels))
    top5 = int(np.sum(np.any(order[:, :5] == labels[:, None], axis=1)))
    ranked = np.take_along_axis(logits, order, axis=1)
    tolerance = 1e-4 * np.abs(logits).max()
    ties = (ranked[:, 0] - ranked[:, 1] < tolerance) | (ranked[:, 4] - ranked[:, 5] < tolerance)
    return top1, top5, int(np.sum(ties))


def assert_matches_reference(result, logits, labels):
    top1, top5, ties = reference_counts(logits, labels)
    assert result["count"] == len(labels)
    assert abs(result["correct1"] - top1) <= ties and abs(result["correct5"] - top5) <= ties, (result, top1, top5)
    np.testing.assert_allclose(result["top1"], 100 * result["correct1"] / len(labels), rtol=1e-12)


def labels_half_right(rng, logits, num_classes) -> np.ndarray:
    """The model's own prediction for every other example and a random label elsewhere, so accuracy is far
    from both 0 and 100 and a miscounted batch shows."""
    labels = rng.integers(0, num_classes, len(logits)).astype(np.int32)
    labels[::2] = logits[::2].argmax(1)
    return labels


def write_cifar100c(folder: Path, torch_model, rng, corruptions=WRITTEN_CORRUPTIONS) -> dict:
    """A folder in the release's layout: labels.npy (the same BLOCK labels repeated for each severity) and a
    (5 * BLOCK, 32, 32, 3) uint8 <corruption>.npy for each of `corruptions`. Each block holds a random number of
    images the model gets right (so accuracies differ between severities) and random images for the rest.
    Returns {corruption: images}."""
    pool = random_images(rng, BLOCK + 40)
    labels = torch_logits(torch_model, pool[:BLOCK]).argmax(1).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    written = {}
    for corruption in corruptions:
        blocks = []
        for _ in range(5):
            right = int(rng.integers(0, BLOCK + 1))
            blocks.append(np.concatenate([pool[:right], pool[rng.choice(np.arange(BLOCK, len(pool)), BLOCK - right)]]))
        written[corruption] = np.concatenate(blocks)
        np.save(folder / f"{corruption}.npy", written[corruption])
    return written


def write_cifar100_python(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A cifar-100-python folder with a `test` file as the CIFAR page documents it (Python 3 pickle, bytes keys,
    rows of R, G, B planes)."""
    folder.mkdir(parents=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    (folder / "test").write_bytes(pickle.dumps({b"data": rows, b"fine_labels": [int(v) for v in labels]}))
    return folder


def assert_one_line_error(code, stdout, err, expected):
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: random data that is the same on every run, so that a failure
    reproduces and a tolerance is not met by luck."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one intra-op thread for a module's tests: their tensors are tiny, and a thread pool on a few
    shared cores waits on the other processes more than it computes (a ShuffleV1 forward: 3 s on 2 threads
    under load, 0.05 s on one). Restored afterwards (the setting is process-wide)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- method tests: random feature pairs, and a few engine train steps against a PyTorch loop

# (stage output shapes NHWC, pooled size) of a student and a teacher: the same shapes, and a teacher with other
# channels, spatial sizes and stage count
FEATURE_PAIRS = {
    "homogeneous": (([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32), ([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32)),
    "heterogeneous": (([(8, 8, 8), (4, 4, 16), (2, 2, 32)], 32),
                      ([(8, 8, 16), (4, 4, 24), (4, 4, 40), (4, 4, 48)], 48)),
}


def random_model_outputs(rng, batch: int, stage_shapes, pooled_size: int, scale=1.0, shift=0.0):
    """A `ModelOutput` of float32 numpy features (normal * scale + shift): stage outputs and the pooled vector."""
    features = [(rng.normal(size=(batch, *shape)) * scale + shift).astype(np.float32) for shape in stage_shapes]
    return ModelOutput(features, (rng.normal(size=(batch, pooled_size)) * scale + shift).astype(np.float32), None)


def engine_train_steps(config, student_arch: str, teacher_arch: str, num_classes: int, student_variables: dict,
                       teacher_variables: dict, method_variables: dict, images, labels, method_state=None):
    """`jaxkd.engine.step.make_update` (jitted once) for len(images) steps from the given weights (the method's
    {"params", "batch_stats"} and state), one epoch: per-step {loss, ce, term} and the final train state."""
    steps, batch_size = len(images), len(images[0])
    setup = Setup(student=get_model(student_arch, num_classes), method=get_method(config.method, config),
                  teacher=Teacher(get_model(teacher_arch, num_classes), teacher_variables, teacher_arch),
                  optimizer=make_optimizer(config, steps), train=None, test=None, steps_per_epoch=steps,
                  mesh=data_mesh(), config=config)
    params = {"student": student_variables["params"], "method": method_variables.get("params", {})}
    batch_stats = {"student": student_variables["batch_stats"], "method": method_variables.get("batch_stats", {})}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=setup.optimizer.init(params), rng=jax.random.PRNGKey(0),
                       method_state={} if method_state is None else method_state)
    update = jax.jit(make_update(setup))
    history = []
    for step in range(steps):
        batch = Batch(jnp.asarray(images[step]), jnp.asarray(labels[step]), jnp.arange(batch_size, dtype=jnp.int32),
                      jax.random.PRNGKey(step))
        state, metrics = update(state, batch, teacher_variables)
        history.append({name: float(metrics[name]) for name in ("loss", "ce", "term")})
    return history, jax.device_get(state)


@pytest.fixture(scope="session")
def gcs():
    """A GCS server on localhost (tests/gcs_server.py) with the bucket `runs`, started once per session; the
    clients of this process and of the subprocesses it starts are pointed at it."""
    from tests.gcs_server import GcsServer, apply_environment

    server = GcsServer(buckets=("runs",))
    apply_environment(server.environment())
    yield server
    server.stop()


def write_evaluation_files(folder: Path, num_images: int) -> Path:
    """In `folder`: a random resnet8 with 100 classes as resnet8_100.pth, `cifar-100-python/` with `num_images`
    test images (half labelled as the model predicts) and `CIFAR-100-C/` (WRITTEN_CORRUPTIONS). Returns the .pth."""
    rng = np.random.default_rng(0)
    torch_model = randomized_torch_model("resnet8", 100)
    checkpoint = folder / "resnet8_100.pth"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torch_model.state_dict(), checkpoint)
    images = random_images(rng, num_images)
    write_cifar100_python(folder / "cifar-100-python", images,
                          labels_half_right(rng, torch_logits(torch_model, images), 100))
    write_cifar100c(folder / "CIFAR-100-C", torch_model, rng)
    return checkpoint


# Fixtures shared by a module's tests that are cheap enough to build on each worker that needs them.
CHEAP_SHARED_FIXTURES = {"one_torch_thread"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on 2 pytest-xdist workers (`--dist loadgroup`). A module whose tests share a
    module-scoped fixture (a training run they all read) becomes one group, kept on one worker so that the
    fixture is built once; every other test is scheduled on its own. xdist hands out the groups first, the
    largest first, then the single tests."""
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        shared = [name for name, defs in (definitions.name2fixturedefs.items() if definitions else ())
                  if name not in CHEAP_SHARED_FIXTURES and defs[-1].scope == "module"]
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stops an xdist run whose groups were not applied (pytest 9.2 with pytest-xdist 3.8 drops them without a
    word), rather than let both workers build every module's shared runs."""
    if node.config.getoption("dist") == "loadgroup" and ids and not any("@" in nodeid for nodeid in ids):
        pytest.exit("pytest-xdist did not apply the groups of tests/conftest.py: use the pytest versions that "
                    "pyproject.toml's [test] allows", returncode=4)
