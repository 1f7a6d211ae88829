"""DML: the losses against a PyTorch reference (tests/reference/dml_loss.py) for K = 2 and 3, the gradient
property that makes one SGD over all params equal to K separate DML updates, stacked and mixed-architecture
peers, the config, and a run on digits end to end (K = 3: learning, each peer's and the ensemble's evaluation,
and `peer1.pth` loading strictly into the PyTorch model). The peers are the method's variables, which a
checkpoint holds as any method's: the exact resume of a method's modules is tests/test_method_byot.py's."""

import contextlib
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from configs import default, dml_wrn
from jaxkd.data import load_split
from jaxkd.data.augment import normalize
from jaxkd.engine.evaluation import evaluate_split
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.losses import cross_entropy
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.dml import DML, mutual_losses
from jaxkd.models import get_model
from jaxkd.models.output import ModelOutput
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.assertions import assert_bitwise_equal, assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.runs import SMALL_DIGITS, on_digits
from tests.helpers.torch_references import nchw
from tests.reference.dml_loss import dml_losses as torch_dml_losses

REL = 1e-5  # float32 parity: max |jax - torch| <= REL * max |torch|


# --- the losses against PyTorch ----------------------------------------------------------------------------

@pytest.mark.parametrize("num_peers", [2, 3])
def test_mutual_losses_match_pytorch_dml(num_peers, rng):
    """Each peer's loss CE_i + 1/(K-1) sum_j KL(sg(p_j) || p_i), their sum (CE_0 + the term), and the gradient
    of that sum w.r.t. every peer's logits (in PyTorch: the sum of the L_i backpropagated, whose detached
    targets leave dL_i/dz_i on z_i), on random logits."""
    batch, classes = 16, 10
    logits = (rng.normal(size=(num_peers, batch, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)

    torch_logits = [torch.tensor(z, requires_grad=True) for z in logits]
    torch_losses = torch_dml_losses(torch_logits, torch.tensor(labels))
    sum(torch_losses).backward()

    ce, kl = mutual_losses(list(jnp.asarray(logits)), jnp.asarray(labels))
    for i in range(num_peers):
        assert float(ce[i] + kl[i]) == pytest.approx(torch_losses[i].item(), rel=REL), f"L_{i}"

    def total(z):  # the engine's gamma * CE_0 + beta * term with gamma = beta = 1
        ce, kl = mutual_losses(list(z), jnp.asarray(labels))
        return ce[0] + (jnp.sum(ce[1:]) + jnp.sum(kl))

    value, grads = jax.value_and_grad(total)(jnp.asarray(logits))
    assert float(value) == pytest.approx(sum(loss.item() for loss in torch_losses), rel=REL)
    for i in range(num_peers):
        assert_close_scaled(grads[i], torch_logits[i].grad.numpy(), REL, f"dL_{i}/dz_{i}")


def test_identical_peers_have_no_mutual_loss():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), jnp.float32)
    _, kl = mutual_losses([z, z, z], jnp.zeros(4, jnp.int32))
    assert np.abs(np.asarray(kl)).max() < 1e-6


# --- the method on real models ------------------------------------------------------------------------------

def tiny_method(peers, forward="auto"):
    config = dml_wrn.get_config()
    config.model = "resnet8"
    config.dml.peers = tuple(peers)
    config.dml.forward = forward
    return DML("dml", config)


def probe_batch(rng, batch_size=8, classes=10):
    """Random 16x16 images (the peers are fully convolutional: a quarter of CIFAR's pixels, the same programs)."""
    images = jnp.asarray(rng.normal(size=(batch_size, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, size=batch_size), jnp.int32)
    return Batch(images, labels, jnp.arange(batch_size, dtype=jnp.int32), jax.random.PRNGKey(3))


@pytest.mark.parametrize("peers, forward", [(("resnet8",), "loop"), (("resnet8", "wideresnet16_1", "resnet8"), "vmap")],
                         ids=["K2-loop", "K4-mixed-vmap"])
def test_gradient_w_r_t_each_peer_is_its_own_dml_loss(peers, forward, rng):
    """With gamma = beta = 1, d(CE_0 + term)/d theta_i equals d L_i/d theta_i, where L_i sees the other peers
    only as constant targets (numpy arrays), and L_i's gradient w.r.t. every other peer is exactly zero: the
    other peers' parameters enter peer i's update only through the stop-gradient targets, so one SGD over all
    params is K separate DML steps. Both sides use the same (stacked) forward, so ReLU gates cannot flip between
    them; the stacked forward itself is compared with each exported peer run alone."""
    method = tiny_method(peers, forward)
    batch = probe_batch(rng)
    student = get_model("resnet8", 10)
    # every program here jitted once (tests/helpers/compile_once.py)
    student_variables = jit_once(lambda key: student.init(key, batch.images, train=False))(jax.random.PRNGKey(0))
    init = jit_once(lambda key: method.init(key, Probe(None, None, batch, None, 10)))(jax.random.PRNGKey(1))
    params = {"student": student_variables["params"], "method": init.variables["params"]}
    num_peers = len(peers) + 1

    def all_logits(params):
        """[z_0, ..., z_{K-1}] in train mode: the student, then the peers' stacked forward."""
        out, _ = student.apply({"params": params["student"], "batch_stats": student_variables["batch_stats"]},
                               batch.images, train=True, mutable=["batch_stats"], method=student.forward)
        peer_logits, _ = method.peer_logits({"params": params["method"],
                                             "batch_stats": init.variables["batch_stats"]}, batch.images, True, 10)
        return out, [out.logits] + peer_logits

    def total(params):
        out, _ = all_logits(params)
        term = method.term({"params": params["method"], "batch_stats": init.variables["batch_stats"]}, {},
                           out, None, batch, train=True)
        return cross_entropy(out.logits, batch.labels) + term.term

    @jit_once
    @jax.grad
    def own_loss(params, i, targets):
        """L_i = CE_i + 1/(K-1) sum_{j != i} KL(p_j || p_i) with the other peers' p_j given as (K-1, B, C)."""
        log_p = jax.nn.log_softmax(jnp.stack(all_logits(params)[1])[i])
        ce = -jnp.mean(jnp.take_along_axis(log_p, batch.labels[:, None], axis=1))
        kl = jnp.sum(targets * (jnp.log(targets) - log_p[None])) / log_p.shape[0]
        return ce + kl / (num_peers - 1)

    grads = jit_once(jax.grad(total))(params)
    logits = [np.asarray(z) for z in jit_once(lambda p: all_logits(p)[1])(params)]
    slots = {arch: list(range(peers.count(arch))) for arch in peers}
    slot_of = [("student", None)] + [(arch, slots[arch].pop(0)) for arch in peers]

    def part(tree, i):
        """Peer i's slice of a {"student", "method": {arch: stacked}} tree."""
        arch, index = slot_of[i]
        return tree["student"] if i == 0 else jax.tree.map(lambda x: x[index], tree["method"][arch])

    for i in range(num_peers):
        targets = np.stack([jax.nn.softmax(logits[j]) for j in range(num_peers) if j != i])  # constants
        own_grads = own_loss(params, i, targets)
        for (path, got), (_, want) in zip(jax.tree_util.tree_leaves_with_path(part(grads, i)),
                                          jax.tree_util.tree_leaves_with_path(part(own_grads, i))):
            assert_close_scaled(got, want, REL, f"peer {i} {jax.tree_util.keystr(path)}")
        for j in range(num_peers):
            if j != i:
                assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(part(own_grads, j))), (i, j)

    # The stacked forward equals every exported peer run alone (the vmapped grouped convolutions round apart).
    exported = method.exports(init.variables)
    assert list(exported) == [f"peer{n}" for n in range(1, num_peers)]
    for n in range(1, num_peers):
        arch, variables = exported[f"peer{n}"]
        assert arch == peers[n - 1]
        assert_bitwise_equal(variables["params"], part(params, n))
        model = get_model(arch, 10)
        alone = jax.jit(lambda v, model=model: model.apply(v, batch.images, train=True, mutable=["batch_stats"],
                                                           method=model.forward)[0].logits)(variables)
        assert_close_scaled(alone, logits[n], REL, f"peer {n} alone vs stacked")


def test_vmapped_and_looped_peers_agree(rng):
    """`config.dml.forward` changes only how the stacked peers run: logits and updated statistics agree (train
    mode) and so do the eval-mode logits."""
    batch = probe_batch(rng)
    vmapped, looped = tiny_method(["resnet8", "resnet8"], "vmap"), tiny_method(["resnet8", "resnet8"], "loop")
    variables = jit_once(lambda key: vmapped.init(key, Probe(None, None, batch, None, 10)).variables)(
        jax.random.PRNGKey(0))
    for train in (True, False):
        (z_v, stats_v), (z_l, stats_l) = (jit_once(m.peer_logits, static_argnums=(2, 3))(variables, batch.images,
                                                                                          train, 10)
                                          for m in (vmapped, looped))
        for n, (a, b) in enumerate(zip(z_v, z_l), start=1):
            assert_close_scaled(a, b, REL, f"peer {n} logits, train={train}")
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(stats_v), jax.tree.leaves(stats_l)):
            assert_close_scaled(a, b, REL, f"{jax.tree_util.keystr(path)}, train={train}")


def test_zoo_peers_with_other_classifier_names_run_like_their_exports(rng):
    """Peers whose classifier is not named `linear` (vgg's `classifier`, RepDistiller's ResNets' `fc`):
    the term and the evaluation logits run, and each stacked peer's logits are its exported variables' own."""
    method = tiny_method(("vgg8", "rd_resnet8"))
    batch = probe_batch(rng)
    out = ModelOutput([], None, jnp.asarray(rng.normal(size=(8, 10)), jnp.float32))  # the student's logits suffice
    variables = jit_once(lambda key: method.init(key, Probe(None, None, batch, None, 10)).variables)(
        jax.random.PRNGKey(1))  # jitted: one compile, where eager initialization compiles op by op
    logits = jit_once(method.eval_logits)(variables, out, batch.images)
    for name, (arch, peer_variables) in method.exports(variables).items():
        model = get_model(arch, 10)
        _, alone = jit_once(lambda v, model=model: model.apply(v, batch.images, train=False))(peer_variables)
        assert logits[name].shape == (8, 10)
        assert_close_scaled(logits[name], alone, REL, name)
    term = jit_once(lambda v: method.term(v, {}, out, None, batch, train=True))(variables)
    assert np.isfinite(float(term.term)) and set(term.metrics) >= {"peer1_ce", "peer2_ce"}


def test_peers_start_from_distinct_keys_and_update_their_statistics(rng):
    method = tiny_method(("resnet8", "resnet8"))
    batch = probe_batch(rng)
    student = get_model("resnet8", 10)
    out = student.apply(student.init(jax.random.PRNGKey(9), batch.images), batch.images, method=student.forward)
    init = method.initialize(jax.random.PRNGKey(0), Probe(out, None, batch, None, 10))
    kernels = np.asarray(init.variables["params"]["resnet8"]["layer0"]["kernel"])
    assert kernels.shape[0] == 2 and not np.array_equal(kernels[0], kernels[1])
    trained = method.term(init.variables, {}, out, None, batch, train=True)
    evaluated = method.term(init.variables, {}, out, None, batch, train=False)
    mean_of = lambda stats: np.asarray(stats["resnet8"]["finalact"]["mean"])  # noqa: E731
    assert np.all(mean_of(init.variables["batch_stats"]) == 0)
    assert np.all(mean_of(trained.batch_stats) != 0)  # train mode moves the running statistics of both peers
    assert np.all(mean_of(evaluated.batch_stats) == 0)  # eval mode keeps them
    assert set(trained.metrics) == set(method.metric_names) == {"peer0_kl"} | {
        f"peer{n}_{kind}" for n in (1, 2) for kind in ("ce", "kl", "accuracy")}
    expected = trained.metrics["peer1_ce"] + trained.metrics["peer2_ce"] + sum(
        trained.metrics[f"peer{n}_kl"] for n in range(3))
    assert float(trained.term) == pytest.approx(float(expected), rel=1e-6)
    assert set(method.eval_logits(init.variables, out, batch.images)) == {"peer1", "peer2"}


def test_config_recipe_defaults_and_errors():
    config = dml_wrn.get_config()
    assert (config.model, config.method, tuple(config.dml.peers)) == ("wideresnet16_2", "dml", ("wideresnet16_2",))
    assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == (1.0, 0.0, 1.0)
    assert (config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay, config.epochs) == \
        (0.05, 0.9, 5e-4, 240)
    method = get_method("dml", config)
    assert method.peers == ("wideresnet16_2",) and method.forward_mode == "auto" and not method.uses_teacher
    plain = default.get_config()  # no `dml` section: one peer of the student's architecture
    plain.model = "wrn40_1"
    assert DML("dml", plain).peers == ("wideresnet40_1",) and DML("dml", plain).forward_mode == "auto"
    config.dml.peers = ("wrn16_2,resnet8",)  # how `--config.dml.peers=wrn16_2,resnet8` arrives
    assert DML("dml", config).peers == ("wideresnet16_2", "resnet8")
    config.dml.peers = ()
    with pytest.raises(UserError, match=r"--config.dml.peers=\(\): must be one or more model names"):
        DML("dml", config)
    config.dml.peers = ("resnet9",)
    with pytest.raises(UserError, match="unknown model 'resnet9'"):
        DML("dml", config)
    config.dml.peers = ("resnet8",)
    config.dml.forward = "pmap"
    with pytest.raises(UserError, match="--config.dml.forward=pmap: must be one of auto, vmap, loop"):
        DML("dml", config)
    config.dml.forward = "auto"
    config.dml.temperature = 4.0
    with pytest.raises(UserError, match=r"unknown config.dml keys \['temperature'\]"):
        DML("dml", config)


# --- end to end on digits ------------------------------------------------------------------------------------

def tiny(peers, epochs: int):
    """configs/dml_wrn.py with resnet8 peers on digits, 22 steps per epoch."""
    config = on_digits(dml_wrn.get_config(), epochs=epochs)
    config.dml.peers = tuple(peers)
    return config


def run(config, workdir):
    """train_and_evaluate, also returning what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train_and_evaluate(config, workdir)
    return result, printed.getvalue()


def records(workdir, kind):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def final_state(workdir):
    checkpoints = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore(checkpoints / str(last) / "state")


PEERS = ["resnet8", "resnet8"]  # K = 3: the student and two peers


@pytest.fixture(scope="module")
def three_peers(tmp_path_factory):
    """K = 3 for two epochs without interruption: the reference of the resume test."""
    workdir = tmp_path_factory.mktemp("dml_k3")
    result, printed = run(tiny(PEERS, 2), workdir)
    return workdir, result, printed


def test_three_peers_learn_on_digits_and_are_each_evaluated(three_peers):
    workdir, result, _ = three_peers
    assert result["step"] == 44
    train = records(workdir, "train")
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["ce"] < train[0]["ce"]
    assert all(train[-1][f"dml_peer{n}_ce"] < train[0][f"dml_peer{n}_ce"] for n in (1, 2))
    for record in train:  # the logged parts add up to the term
        parts = sum(record[f"dml_peer{n}_ce"] for n in (1, 2)) + sum(record[f"dml_peer{n}_kl"] for n in range(3))
        assert parts == pytest.approx(record["term"], rel=1e-5)
    assert "dml_peer2_accuracy" in train[0]
    evaluation = records(workdir, "eval")[-1]
    assert {"peer1_top1", "peer2_top1", "ensemble_top1"} <= set(evaluation)
    assert (workdir / "peer2.pth").exists() and (workdir / "peer2").is_dir()
    state = final_state(workdir)
    peer_kernels = np.asarray(state["params"]["method"]["resnet8"]["linear"]["kernel"])
    assert peer_kernels.shape == (2, 64, 10)
    student_kernel = np.asarray(state["params"]["student"]["linear"]["kernel"])
    assert not np.array_equal(peer_kernels[0], student_kernel) and not np.array_equal(peer_kernels[0],
                                                                                       peer_kernels[1])


def test_each_peer_and_the_ensemble_are_evaluated_and_exported(three_peers):
    """The eval record and line give peer1's and the ensemble's accuracy, which match the exported models;
    `peer1.pth` loads strictly into the seed's PyTorch model and predicts like the JAX peer."""
    workdir, result, printed = three_peers
    evaluation = records(workdir, "eval")[-1]
    assert evaluation["epoch"] == 2 and evaluation["top1"] == pytest.approx(result["last_top1"])
    assert f"peer1 {evaluation['peer1_top1']:.2f}" in printed
    assert f"ensemble {evaluation['ensemble_top1']:.2f}" in printed

    test = load_split("digits", "test", digits_size=SMALL_DIGITS)
    one_example = 100.0 / len(test.labels) + 1e-9  # vmapped and single-peer convolutions may round apart
    peer_variables, metadata = load_model_checkpoint(workdir / "peer1")
    assert metadata["arch"] == "resnet8"
    peer = get_model("resnet8", 10)
    peer_top1 = evaluate_split(peer, peer_variables, test.images, test.labels)["top1"]
    assert abs(peer_top1 - evaluation["peer1_top1"]) <= one_example

    images = normalize(jnp.asarray(test.images))
    student_variables, _ = load_model_checkpoint(workdir / "model")
    second_peer_variables, _ = load_model_checkpoint(workdir / "peer2")
    probabilities = [jax.nn.softmax(peer.apply(v, images, train=False)[1]) for v in
                     (student_variables, peer_variables, second_peer_variables)]
    ensemble_top1 = 100.0 * float(jnp.mean(jnp.argmax(sum(probabilities), -1) == test.labels))
    assert abs(ensemble_top1 - evaluation["ensemble_top1"]) <= one_example

    torch_peer = get_torch_model("resnet8", 10)
    torch_peer.load_state_dict(torch.load(workdir / "peer1.pth", weights_only=True), strict=True)
    torch_peer.eval()
    with torch.no_grad():
        torch_logits = torch_peer(nchw(np.asarray(images[:32])))
    torch_logits = torch_logits[1] if isinstance(torch_logits, tuple) else torch_logits
    assert_close_scaled(peer.apply(peer_variables, images[:32], train=False)[1], torch_logits.numpy(), 1e-4,
                        "peer1.pth in PyTorch vs the JAX peer")
