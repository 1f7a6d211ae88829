"""DML (Zhang et al., CVPR 2018, "Deep Mutual Learning") as the PyTorch references run it
(chxy95/Deep-Mutual-Learning `trainer.py`, AberHu/Knowledge-Distillation-Zoo `train_dml.py`).

K >= 2 peers learn together from one forward per batch: the engine's student is peer 0, peers 1..K-1 are the
method's trainable params, and the term is built so that one SGD over all params is K independent SGDs. The term,
the peers' layout and forward, what is logged and exported: docs/methods.md, "What each term is": DML.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxkd.config.specs import ModelNames, one_of
from jaxkd.data.saliencymix import mixed_cross_entropy
from jaxkd.engine.losses import cross_entropy, kd_divergence
from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput, apply_module
from jaxkd.models import canonical_name, get_model

FORWARD_MODES = ("auto", "vmap", "loop")


def peer_architectures(peers, student: str) -> tuple[str, ...]:
    """The canonical architectures of peers 1..K-1: `peers` (`config.dml.peers`), by default (None) one peer of
    the student's architecture. Comma-separated names are split (`--config.dml.peers=a,b` arrives as the
    one-element tuple ("a,b",))."""
    if peers is None:
        peers = (student,)
    if isinstance(peers, str):
        peers = (peers,)
    peers = tuple(name.strip() for item in peers for name in str(item).split(",") if name.strip())
    if len(peers) < 1:
        raise UserError("config.dml.peers must name at least one peer (DML needs K >= 2 networks with the "
                        "student)")
    return tuple(canonical_name(name) for name in peers)


def mutual_losses(logits: Sequence[jax.Array], labels: jax.Array, partners=None, lam=1.0):
    """Each peer's CE and mutual-learning KL, two (K,) vectors: ce[i] = CE(z_i, y) (SaliencyMix's mixed CE when
    `partners` is given) and kl[i] = 1/(K-1) * sum_{j != i} batch-mean KL(sg(p_j) || p_i) at T = 1, so that
    peer i's DML loss is ce[i] + kl[i]."""
    num_peers = len(logits)
    if num_peers < 2:
        raise ValueError(f"DML needs at least two peers, got {num_peers}")
    ce = jnp.stack([cross_entropy(z, labels) if partners is None else mixed_cross_entropy(z, labels, partners, lam)
                    for z in logits])
    # kd_divergence at T = 1 is exactly sum_bc p_j (log p_j - log p_i) / B with p_j detached.
    kl = jnp.stack([sum(kd_divergence(logits[i], logits[j], 1.0) for j in range(num_peers) if j != i)
                    / (num_peers - 1) for i in range(num_peers)])
    return ce, kl


class DML(Method):
    """Peers 1..K-1 as method params; the term is their CEs plus every peer's mutual-learning KL."""

    display_name = "DML"
    # peers: architectures of peers 1..K-1 (None: one of the student's). forward: how a group of same-architecture
    # peers runs. "vmap": one vmapped forward (XLA grouped convolutions); "loop": one forward per peer, unrolled
    # in the same jitted step; "auto": loop on CPU, where XLA's grouped convolutions are slow (2 stacked resnet8
    # at batch 64, forward + backward: 2.3 s vmapped vs 0.28 s looped), vmap on accelerators. The stacked params
    # are the same either way.
    defaults = {"peers": None, "forward": "auto"}
    specs = {"peers": ModelNames(), "forward": one_of(*FORWARD_MODES)}

    def __init__(self, name, config=None):
        super().__init__(name, config)
        if config is None or config.get("model", None) is None:
            raise UserError("DML needs the config: its peers default to the student's architecture, config.model")
        self.peers = peer_architectures(self.settings["peers"], config.model)  # peer n has self.peers[n - 1]
        self.forward_mode = self.settings["forward"]
        self.groups: dict[str, list[int]] = {}  # architecture -> its peers' numbers, in stacking order
        for number, arch in enumerate(self.peers, start=1):
            self.groups.setdefault(arch, []).append(number)

    @property
    def networks(self) -> tuple:
        """One module per peer architecture, for the step's compile options (which read the module's class,
        not its number of classes)."""
        return tuple(get_model(arch) for arch in self.groups)

    def _stack_slot(self, number: int) -> tuple[str, int]:
        """(architecture, index on the stacked axis) of peer `number`."""
        arch = self.peers[number - 1]
        return arch, self.groups[arch].index(number)

    def init(self, rng, probe: Probe) -> MethodInit:
        """Each peer gets the seed's init from its own key; a group's variables are stacked on axis 0."""
        keys = jax.random.split(rng, len(self.peers))
        images = probe.batch.images
        params, batch_stats = {}, {}
        for arch, numbers in self.groups.items():
            model = get_model(arch, probe.num_classes)
            inits = [model.init(keys[n - 1], images, train=False) for n in numbers]
            params[arch] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(v["params"] for v in inits))
            batch_stats[arch] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(v["batch_stats"] for v in inits))
        return MethodInit({"params": params, "batch_stats": batch_stats}, {})

    def _vectorized(self) -> bool:
        return self.forward_mode == "vmap" or (self.forward_mode == "auto" and jax.default_backend() != "cpu")

    def peer_logits(self, variables: dict, images: jax.Array, train: bool, num_classes: int):
        """([logits of peer 1, ..., peer K-1], batch_stats): per architecture, its stacked peers in one vmapped
        forward (or one after the other, `config.dml.forward`); in train mode with batch statistics (and their
        updated running averages), else with the running statistics. `num_classes`: the student's (every
        architecture names its classifier differently)."""
        logits, new_stats = [None] * len(self.peers), {}
        for arch, numbers in self.groups.items():
            model = get_model(arch, num_classes)

            def forward(params, stats, model=model):
                out, stats = apply_module(model, {"params": params, "batch_stats": stats}, images, train=train,
                                          method=model.forward)
                return out.logits, stats

            params, stats = variables["params"][arch], variables["batch_stats"][arch]
            if self._vectorized():
                group_logits, new_stats[arch] = jax.vmap(forward)(params, stats)
            else:
                outputs = [forward(*jax.tree.map(lambda x, i=i: x[i], (params, stats))) for i in range(len(numbers))]
                group_logits = [z for z, _ in outputs]
                new_stats[arch] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(s for _, s in outputs))
            for index, number in enumerate(numbers):
                logits[number - 1] = group_logits[index]
        return logits, new_stats

    def term(self, variables, state, student, teacher, batch: Batch, train: bool) -> TermOutput:
        peer_logits, batch_stats = self.peer_logits(variables, batch.images, train, student.logits.shape[-1])
        ce, kl = mutual_losses([student.logits] + peer_logits, batch.labels, batch.partners, batch.lam)
        metrics = {"peer0_kl": kl[0]}
        for n, z in enumerate(peer_logits, start=1):
            metrics[f"peer{n}_ce"] = ce[n]
            metrics[f"peer{n}_kl"] = kl[n]
            metrics[f"peer{n}_accuracy"] = 100.0 * jnp.mean(jnp.argmax(z, -1) == batch.labels)
        return TermOutput(jnp.sum(ce[1:]) + jnp.sum(kl), metrics, batch_stats)

    def eval_logits(self, variables, student, images) -> dict:
        logits, _ = self.peer_logits(variables, images, False, student.logits.shape[-1])
        return {f"peer{n}": z for n, z in enumerate(logits, start=1)}

    def exports(self, variables) -> dict:
        """Every peer un-stacked into plain variables of the seed family: {"peer1": (arch, variables), ...}."""
        models = {}
        for number in range(1, len(self.peers) + 1):
            arch, index = self._stack_slot(number)
            models[f"peer{number}"] = (arch, {
                "params": jax.tree.map(lambda x: x[index], variables["params"][arch]),
                "batch_stats": jax.tree.map(lambda x: x[index], variables["batch_stats"][arch])})
        return models
