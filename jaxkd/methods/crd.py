"""CRD: contrastive representation distillation (Tian et al., ICLR 2020), as RepDistiller runs it
(`crd/criterion.py` `CRDLoss`, `crd/memory.py` `ContrastMemory`, `dataset/cifar100.py` `CIFAR100InstanceSample`),
with RepDistiller's recipe (gamma 1, alpha 0, beta 0.8); docs/methods.md, "What each term is": CRD.

- Two `Embed` heads map the student's and the teacher's pooled vectors to 128-d unit vectors; both are trained.
- Two memory banks of N x 128 rows (`bank_student`, RepDistiller's memory_v1; `bank_teacher`, memory_v2). Scoring
  is crossed: the student embedding against the teacher bank and the teacher embedding against the student
  bank, exp(<w, v> / T).
- The positive is the example's own row; the K negatives are drawn uniformly without replacement from the
  other classes' examples, fresh every step (with replacement when a class leaves fewer than K).
- Z (one per side) is set from the first batch, mean(score) * N, then frozen; a negative Z means "not set".
- Loss per side: `ContrastLoss`, NCE with Pn = 1/N, c = K/N, eps 1e-7; the term is the sum of both sides.
- After scoring, the banks' rows at the batch indices move to normalize(m * row + (1 - m) * embedding).

The sampling and the chunked scoring, written for memory and speed, are in `jaxkd/methods/crd_kernels.py`.
"""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.config.specs import fraction, positive_float, positive_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput, nested
from jaxkd.methods.crd_kernels import Negatives, ScoredBank, batch_chunks, chunked_loss_pair, map_chunks
from jaxkd.models.resnet import linear_init

# config.crd.chunk_elements: at most this many (anchor, dataset row) pairs per chunk of the batch (8 rows at N
# 50000). It bounds the sampler's and the scoring's memory and changes results only by float rounding.
CHUNK_ELEMENTS = 1 << 19
NCE_EPS = 1e-7


def l2_normalize(x):
    """x / ||x||_2 along the last axis, without eps (RepDistiller's `Normalize` and memory renormalization)."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


class Embed(nn.Module):
    """RepDistiller's `Embed`: flatten, `nn.Linear(dim_in, features)` with PyTorch's default init (weight and
    bias U(-1/sqrt(dim_in), 1/sqrt(dim_in))), then L2 normalization."""

    features: int = 128

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        bound = 1.0 / math.sqrt(x.shape[-1])

        def bias_init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return l2_normalize(nn.Dense(self.features, kernel_init=linear_init, bias_init=bias_init,
                                     name="linear")(x))


class Embeddings(nn.Module):
    """CRD's trainable modules: `embed_student` and `embed_teacher`, called on the two pooled vectors."""

    features: int = 128

    @nn.compact
    def __call__(self, student_vectors, teacher_vectors, train: bool = False):  # no BN: `train` changes nothing
        return (Embed(self.features, name="embed_student")(student_vectors),
                Embed(self.features, name="embed_teacher")(teacher_vectors))



def init_state(rng, train_labels, feat_dim: int, num_negatives: int) -> dict:
    """The method state: both banks U(-s, s), s = 1/sqrt(feat_dim/3), Z = -1 (unset), the training labels
    (which examples may be an anchor's negatives) and, only when some class's pool of other-class examples
    is smaller than K, the tables for sampling with replacement (class-sorted dataset order, class starts
    and sizes)."""
    labels = np.asarray(train_labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
        raise UserError("CRD needs the training labels as a non-empty vector of class ids")
    n = labels.size
    sizes = np.bincount(labels)
    present = sizes[sizes > 0]
    if len(present) < 2:
        raise UserError("CRD needs at least two classes: negatives come from the other classes")
    stdv = 1.0 / math.sqrt(feat_dim / 3)
    student_rng, teacher_rng = jax.random.split(rng)
    state = {
        "bank_student": jax.random.uniform(student_rng, (n, feat_dim), jnp.float32, -stdv, stdv),
        "bank_teacher": jax.random.uniform(teacher_rng, (n, feat_dim), jnp.float32, -stdv, stdv),
        "z_student": jnp.full((), -1.0, jnp.float32),
        "z_teacher": jnp.full((), -1.0, jnp.float32),
        "labels": jnp.asarray(labels, jnp.int32),
    }
    if num_negatives > n - present.max():  # some pool is smaller than K: those rows draw with replacement
        state["class_order"] = jnp.asarray(np.argsort(labels, kind="stable"), jnp.int32)
        state["class_start"] = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]), jnp.int32)
        state["class_size"] = jnp.asarray(sizes, jnp.int32)
    return state


def nce_sum(embedding, positive_rows, scored: ScoredBank, z, counts, num_negatives: int, temperature):
    """One side's RepDistiller `ContrastLoss` times -B, summed over the rows given: Σ log(P+ / (P+ + c + eps))
    + Σ counts * log(c / (P- + c + eps)), P = score / Z, c = K / N."""
    noise = num_negatives * (1.0 / scored.bank.shape[0])  # c = K * Pn, Pn = 1/N
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature)
    p_positive = positive / z
    total = jnp.sum(jnp.log(p_positive / (p_positive + (noise + NCE_EPS))))
    for scores, weights in negatives:
        total += jnp.sum(weights * jnp.log(jnp.float32(noise) / (scores / z + (noise + NCE_EPS))))
    return total


def score_sum(embedding, positive_rows, scored: ScoredBank, counts, temperature):
    """Σ of the scores of the rows' positives and (with multiplicity) negatives, for Z."""
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature)
    return jnp.sum(positive) + sum(jnp.sum(weights * scores) for scores, weights in negatives)


def first_z(embed_student, embed_teacher, positive_rows, scored, tables, negatives: Negatives, chunks: int,
             num_negatives: int, temperature):
    """Z of both sides from this batch, mean(score) * N over its B (K + 1) scores, chunk by chunk."""
    def chunk_sums(rows, chunk_negatives):
        e_student, e_teacher, positive_student, positive_teacher = rows
        counts = chunk_negatives.counts(tables, num_negatives)
        return (score_sum(e_student, positive_student, scored[0], counts, temperature),
                score_sum(e_teacher, positive_teacher, scored[1], counts, temperature))

    sums = map_chunks(chunk_sums, chunks, (embed_student, embed_teacher, *positive_rows), negatives)
    n, batch = tables["labels"].shape[0], embed_student.shape[0]
    return tuple(jnp.sum(side) / (batch * (num_negatives + 1)) * n for side in sums)


def contrast_term(embed_student, embed_teacher, state: dict, positive, negatives: Negatives, index, *,
                  num_negatives: int, temperature: float, momentum: float, update: bool = True,
                  chunk_elements: int | None = None):
    """RepDistiller's `ContrastMemory` + two `ContrastLoss`es on normalized embeddings (B, d).

    `positive` (B,) are the positives' bank rows (column 0 of contrast_idx), `negatives` where the K negatives
    of each row come from, `index` (B,) the batch's dataset indices (distinct), whose bank rows are updated
    (when `update`) with the scores computed from their previous values. Returns (loss, new state, metrics).

    Memory: the batch is scored in chunks of rows (`batch_chunks`), so that the (rows, N) temporaries stay
    small. The banks are updated first and the chunks score the updated banks, with the B updated rows'
    scores recomputed from their saved previous values: XLA then updates the donated banks in place, where
    loops reading the banks before the update would each need a copy of them."""
    temperature = jnp.float32(temperature)  # RepDistiller keeps T in a float32 buffer
    chunks = batch_chunks(embed_student.shape[0], state["labels"].shape[0], chunk_elements or CHUNK_ELEMENTS)
    tables = {name: value for name, value in state.items() if not name.startswith("bank_")}
    # The student embedding is scored against the teacher bank (out_v1, Z_v1), the teacher's against the
    # student bank; both against the banks before this step's update.
    banks = {name: state[name] for name in ("bank_student", "bank_teacher")}
    if update:
        def moved(bank, embedding):
            rows = bank[index] * momentum + jax.lax.stop_gradient(embedding) * (1.0 - momentum)
            return bank.at[index].set(l2_normalize(rows))

        banks = {"bank_student": moved(state["bank_student"], embed_student),
                 "bank_teacher": moved(state["bank_teacher"], embed_teacher)}
    updated = jnp.zeros(state["labels"].shape, bool).at[index].set(True)
    scored = jax.lax.stop_gradient(
        (ScoredBank(banks["bank_teacher"], updated, index, state["bank_teacher"][index]),
         ScoredBank(banks["bank_student"], updated, index, state["bank_student"][index])))
    positive_rows = jax.lax.stop_gradient((state["bank_teacher"][positive], state["bank_student"][positive]))
    # Z = mean over the batch's B (K+1) scores, times N, on the first call only (Z < 0: unset); then a constant.
    fixed = jax.lax.stop_gradient((embed_student, embed_teacher))
    z = jax.lax.cond(
        (state["z_student"] < 0) | (state["z_teacher"] < 0),
        lambda: tuple(jnp.where(z < 0, first, z) for z, first in zip(
            (state["z_student"], state["z_teacher"]),
            first_z(*fixed, positive_rows, scored, tables, negatives, chunks, num_negatives, temperature))),
        lambda: (state["z_student"], state["z_teacher"]))

    def side_sum(embedding, rows, constants, counts):
        return nce_sum(embedding, rows, *constants, counts, num_negatives, temperature)

    loss_student, loss_teacher = chunked_loss_pair(side_sum, chunks, num_negatives, (embed_student, embed_teacher),
                                                   positive_rows, ((scored[0], z[0]), (scored[1], z[1])), tables,
                                                   negatives)
    metrics = {"nce_student": loss_student, "nce_teacher": loss_teacher, "z_student": z[0], "z_teacher": z[1]}
    if update:
        state = dict(state, **banks, z_student=z[0], z_teacher=z[1])
    return loss_student + loss_teacher, state, metrics


class CRD(Method):
    """The CRD term (weighted by beta; RepDistiller's CRD recipe: gamma 1, alpha 0, beta 0.8)."""

    display_name = "CRD"
    uses_teacher = True
    # RepDistiller's train_student.py, and the chunk bound (a memory setting, not part of the recipe)
    defaults = {"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "feat_dim": 128, "chunk_elements": CHUNK_ELEMENTS}
    specs = {"nce_k": positive_int, "nce_t": positive_float, "nce_m": fraction, "feat_dim": positive_int,
             "chunk_elements": positive_int}

    def module(self, student, teacher) -> Embeddings:
        return Embeddings(self.settings["feat_dim"])

    def module_inputs(self, student, teacher) -> tuple:
        return student.pooled, teacher.pooled

    def init_variables(self, module, rng, inputs) -> dict:
        """The embeddings from `split(rng, 3)[0]` and `[1]` (the keys CRD's runs have always used; the state
        takes `[2]`)."""
        student_rng, teacher_rng, _ = jax.random.split(rng, 3)
        return nested({"embed_student": Embed(module.features).init(student_rng, inputs[0]),
                       "embed_teacher": Embed(module.features).init(teacher_rng, inputs[1])}, ("params",))

    def init(self, rng, probe: Probe) -> MethodInit:
        if probe.teacher is None:
            raise UserError("CRD needs a teacher")
        state = init_state(jax.random.split(rng, 3)[2], probe.train_labels, self.settings["feat_dim"],
                           self.settings["nce_k"])
        if "class_order" in state:
            warnings.warn(f"CRD: K = {self.settings['nce_k']} exceeds the other-class examples of some classes; "
                          f"their anchors draw negatives with replacement (as RepDistiller does)", stacklevel=2)
        return MethodInit(super().init(rng, probe).variables, state)

    def embeddings(self, variables, student, teacher):
        return self.apply_module_of(variables, student, teacher, train=False)[0]

    def _term(self, variables, state, student, teacher, batch: Batch, positive, negatives: Negatives,
              num_negatives: int, train: bool) -> TermOutput:
        embed_student, embed_teacher = self.embeddings(variables, student, teacher)
        loss, state, metrics = contrast_term(
            embed_student, embed_teacher, state, positive, negatives, batch.index,
            num_negatives=num_negatives, temperature=self.settings["nce_t"], momentum=self.settings["nce_m"],
            update=train, chunk_elements=self.settings["chunk_elements"])
        return TermOutput(loss, metrics, state=state)

    def term(self, variables, state, student, teacher, batch: Batch, train: bool) -> TermOutput:
        k = self.settings["nce_k"]
        negatives = Negatives(jnp.arange(batch.labels.shape[0]), batch.labels, rng=batch.rng)
        return self._term(variables, state, student, teacher, batch, batch.index, negatives, k, train)

    def term_with_indices(self, variables, state, student, teacher, batch: Batch, contrast_idx,
                          train: bool = True) -> TermOutput:
        """The term for RepDistiller's explicit `contrast_idx` (B, K+1): positives in column 0."""
        rows = jnp.arange(contrast_idx.shape[0])
        negatives = Negatives(rows, batch.labels, indices=contrast_idx[:, 1:])
        return self._term(variables, state, student, teacher, batch, contrast_idx[:, 0], negatives,
                          contrast_idx.shape[1] - 1, train)
