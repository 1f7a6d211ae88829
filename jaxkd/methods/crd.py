"""CRD (Tian et al., ICLR 2020, "Contrastive Representation Distillation"), exactly as RepDistiller runs it
(METHODS.md section 4; RepDistiller crd/criterion.py, crd/memory.py, dataset/cifar100.py).

- Two `Embed` heads (Linear with PyTorch's default init, then L2 normalization without eps) map the student's
  and the teacher's pooled penultimate vectors to 128-d; both are trained (method params, weight-decayed).
- Two memory banks of N x 128 rows, U(-s, s) with s = 1 / sqrt(128 / 3), not normalized: `bank_student`
  (RepDistiller's memory_v1) and `bank_teacher` (memory_v2). Scoring is crossed: the student embedding is
  scored against the teacher bank and the teacher embedding against the student bank, exp(<w, v> / T).
- The positive is the example's own row ('exact' mode); the K negatives are drawn uniformly WITHOUT
  replacement from the examples of the other classes, fresh every step (with replacement for a class whose
  pool is smaller than K, as RepDistiller's `np.random.choice(..., replace=(K > len))`).
- Z (one per side) is set from the first batch, mean(score) * N, then frozen; a negative Z marks "not set".
- Loss per side: NCE with Pn = 1/N, c = K/N, eps 1e-7; the term is the sum of both sides.
- After scoring, the banks' rows at the batch indices move to normalize(m * row + (1 - m) * embedding).

How it is computed (times and XLA temporaries on 2 CPU cores at B 64, K 16384, N 50000):
- Scores: one matmul scores each embedding against the whole other bank, (B, 128) x (128, N), and the drawn
  negatives enter as (B, N) weights (1 per draw, 0 elsewhere). Gathering the (B, K+1, 128) bank rows as
  RepDistiller does costs 1052 MiB and 760 ms (forward + backward + update), the matmul 98 MiB and 115 ms;
  same sums in another order. The matmul stays cheaper up to N ~ 700,000.
- Sampling without replacement: a uniform K-subset of an anchor's other-class pool is the K largest of
  i.i.d. 32-bit keys, one per (anchor, dataset row) like the scores: Threefry-2x32 of (row, anchor's batch
  position) under the step's key. The K-th largest is found exactly by a 32-pass radix select (counting only)
  and the subset kept as a mask: 106 ms for the batch, against 285 ms for `lax.top_k`, 617 ms for a sort,
  1190 ms for `jax.random.choice(replace=False)`; Floyd's algorithm or a partial Fisher-Yates avoid the keys
  but take K sequential steps. Keys tied at the threshold (probability ~N / 2^32 per row) are taken in
  dataset order.
- Memory: keys, mask, weights, scores and their gradients are (rows, N) arrays, so the batch goes through
  sampling and scoring in chunks of rows (`lax.map`, `config.crd.chunk_elements`: 8 rows at N 50000), and the
  embeddings' gradients are computed in the same pass (a custom VJP), so that nothing (B, N) is kept for the
  backward pass. The banks are updated before scoring, the chunks score the updated banks and the batch's own
  rows are scored from their saved previous values: XLA then updates the donated banks in place, where loops
  reading the banks before the update each cost a copy of them. Engine train step, resnet8 <- resnet8: peak
  320 -> 266 MiB (KD: 205; the banks are 49 of the difference), 211 -> 199 ms (benchmarks/crd_memory.md).

`contrast_term` is the whole computation given the positives and where the negatives come from (`Negatives`:
the sampler's key, or explicit indices); `CRD.term` samples the negatives, `CRD.term_with_indices` takes
RepDistiller's explicit (B, K+1) `contrast_idx`.
"""

import functools
import math
import warnings
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput, section_over_defaults
from jaxkd.models.resnet import linear_init

DEFAULTS = {"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "feat_dim": 128}  # RepDistiller's train_student.py
# config.crd.chunk_elements: at most this many (anchor, dataset row) pairs per chunk of the batch (8 rows at N
# 50000). It bounds the sampler's and the scoring's memory and changes results only by float rounding.
CHUNK_ELEMENTS = 1 << 19
NCE_EPS = 1e-7


def crd_settings(config) -> dict:
    """`config.crd` over RepDistiller's defaults and `chunk_elements` (a config without a `crd` section gets the
    defaults)."""
    settings = section_over_defaults(config, "crd", {**DEFAULTS, "chunk_elements": CHUNK_ELEMENTS})
    if (settings["nce_k"] < 1 or settings["feat_dim"] < 1 or settings["nce_t"] <= 0
            or settings["chunk_elements"] < 1):
        raise UserError(f"config.crd needs nce_k >= 1, feat_dim >= 1, nce_t > 0 and chunk_elements >= 1 (got "
                        f"{settings})")
    return settings


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
                                     name="linear")(x.astype(jnp.float32)))


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


def top_k_mask(keys, allowed, k: int):
    """Boolean mask of the k largest `keys` (uint32, (B, N)) among the `allowed` entries of every row, found
    by radix select: bit by bit from the top, the threshold is the largest value with >= k allowed keys at or
    above it (32 counting passes, no sort). Rows with fewer than k allowed entries get all of them. Keys equal
    to the threshold are taken in index order, as many as are still needed."""
    def refine(bit, threshold):
        candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
        count = jnp.sum(allowed & (keys >= candidate[:, None]), axis=1)
        return jnp.where(count >= k, candidate, threshold)

    threshold = jax.lax.fori_loop(0, 32, refine, jnp.zeros(keys.shape[:1], jnp.uint32))
    above = allowed & (keys > threshold[:, None])
    at = allowed & (keys == threshold[:, None])
    needed = k - jnp.sum(above, axis=1)

    def break_ties(_):
        return above | (at & (jnp.cumsum(at, axis=1) <= needed[:, None]))

    has_ties = jnp.any(jnp.sum(at, axis=1) > needed)
    return jax.lax.cond(has_ties, break_ties, lambda _: above | at, None)


def batch_chunks(batch: int, num_rows: int, chunk_elements: int) -> int:
    """How many chunks the sampler and the scoring split a batch of `batch` anchors into: the fewest (a divisor
    of `batch`) whose chunks of rows hold at most `chunk_elements` (anchor, dataset row) pairs; one row each
    if even that is too many."""
    for chunks in range(1, batch + 1):
        if batch % chunks == 0 and (batch // chunks) * num_rows <= chunk_elements:
            return chunks
    return batch


def _to_chunks(x, chunks: int):
    """(B, ...) -> (chunks, B / chunks, ...), chunk j holding rows j, j + chunks, j + 2 chunks, ... (so that a
    batch sharded in blocks over devices stays sharded along each chunk's rows)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), 0, 1)


def _from_chunks(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def _map_chunks(body, chunks: int, rows, negatives):
    """`jax.lax.map` of body(rows, negatives) over chunks of the batch's rows: `rows` a tuple of (B, ...) arrays,
    `negatives` a `Negatives` (its key, if any, shared by the chunks: an anchor's draws depend on the key and its
    batch position only)."""
    rng = negatives.rng
    inputs = jax.tree.map(lambda x: _to_chunks(x, chunks), (rows, negatives._replace(rng=None)))
    return jax.lax.map(lambda chunk: body(chunk[0], chunk[1]._replace(rng=rng)), inputs)


def _replacement_draws(rng, rows, anchor_labels, state: dict, num_negatives: int):
    """(R, K) dataset indices drawn uniformly WITH replacement from each anchor's other-class examples (row
    `rows[i]` of the batch from its own key): a position p in the pool (the dataset in class order without the
    anchor's class) maps to class_order[p], shifted past the anchor's own class."""
    start = state["class_start"][anchor_labels][:, None]
    size = state["class_size"][anchor_labels][:, None]
    pool = state["labels"].shape[0] - size
    position = jax.vmap(lambda row, high: jax.random.randint(jax.random.fold_in(rng, row), (num_negatives,), 0,
                                                             high))(rows, pool[:, 0])
    return state["class_order"][jnp.where(position >= start, position + size, position)]


def _threefry2x32(key, x0, x1):
    """The Threefry-2x32 hash with 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"),
    the one jax.random uses, of the counter pairs (x0, x1) (uint32 arrays) under `key` (uint32 (2,)): written
    out elementwise so that XLA fuses it into whatever consumes it (jax.random's CPU lowering is a loop whose
    state holds two more arrays the size of the output). Returns both output words."""
    def rotate_left(x, r):
        return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))

    k0, k1 = key[0], key[1]
    schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = rotate_left(x1, r) ^ x0
        x0 = x0 + schedule[(i + 1) % 3]
        x1 = x1 + schedule[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _key_words(rng):
    """A PRNG key (typed or raw uint32) as two uint32 words."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return rng.reshape(-1)[:2].astype(jnp.uint32)


def _sample(rng, rows, anchor_labels, state: dict, num_negatives: int):
    """For the anchors at batch positions `rows` (R,) with labels `anchor_labels`: (without-replacement mask
    (R, N), with-replacement draws (R, K) or None, rows drawing with replacement). The key of anchor `row` for
    dataset row n is Threefry(key, (n, row)): i.i.d. uniform 32-bit keys that do not depend on how the batch is
    chunked."""
    keys_rng, replacement_rng = jax.random.split(rng)
    labels = state["labels"]
    allowed = labels[None, :] != anchor_labels[:, None]
    counters = jnp.arange(labels.shape[0], dtype=jnp.uint32)[None, :]
    keys = _threefry2x32(_key_words(keys_rng), counters,
                         jnp.broadcast_to(rows.astype(jnp.uint32)[:, None], allowed.shape))[0]
    mask = top_k_mask(keys, allowed, num_negatives)
    if "class_order" not in state:
        return mask, None, None
    pool_size = labels.shape[0] - state["class_size"][anchor_labels]
    return (mask, _replacement_draws(replacement_rng, rows, anchor_labels, state, num_negatives),
            pool_size < num_negatives)


def sample_negative_counts(rng, anchor_labels, state: dict, num_negatives: int, rows=None):
    """(R, N) float32: how often each dataset row is a negative of each anchor. K distinct other-class rows
    (a 0/1 mask) for every anchor whose class leaves >= K other examples; otherwise K draws with replacement.
    `rows`: the anchors' positions in the batch (default 0..R-1), which pick their random streams."""
    rows = jnp.arange(anchor_labels.shape[0]) if rows is None else rows
    mask, draws, with_replacement = _sample(rng, rows, anchor_labels, state, num_negatives)
    counts = mask.astype(jnp.float32)
    if draws is None:
        return counts
    return jnp.where(with_replacement[:, None], counts_from_indices(draws, counts.shape[1]), counts)


def sample_contrast_indices(rng, anchor_labels, index, state: dict, num_negatives: int):
    """RepDistiller's `sample_idx` batch for the same draws as `sample_negative_counts(rng, ...)`: (B, K+1)
    int32, the positive (the example itself) in column 0, then the K negatives (in dataset order when drawn
    without replacement). For tests and inspection; the training step uses the counts."""
    mask, draws, with_replacement = _sample(rng, jnp.arange(anchor_labels.shape[0]), anchor_labels, state,
                                            num_negatives)
    distinct = jax.vmap(lambda row: jnp.nonzero(row, size=num_negatives, fill_value=-1)[0])(mask)
    negatives = distinct if draws is None else jnp.where(with_replacement[:, None], draws, distinct)
    return jnp.concatenate([index[:, None], negatives], axis=1).astype(jnp.int32)


def counts_from_indices(negative_indices, num_rows: int):
    """(B, K) dataset indices -> (B, N) float32 multiplicities."""
    rows = jnp.arange(negative_indices.shape[0])[:, None]
    return jnp.zeros((negative_indices.shape[0], num_rows), jnp.float32).at[rows, negative_indices].add(1.0)


class Negatives(NamedTuple):
    """Where each anchor's negatives come from, computed chunk by chunk as (rows, N) counts: drawn by the
    sampler (`rng` given; `rows` the anchors' batch positions, `labels` their classes) or RepDistiller's
    explicit (B, K) indices (`indices` given)."""

    rows: jax.Array
    labels: jax.Array
    rng: jax.Array | None = None
    indices: jax.Array | None = None

    def counts(self, tables: dict, num_negatives: int):
        """(rows, N) float32 multiplicities; `tables`: the method state without the banks."""
        if self.indices is not None:
            return counts_from_indices(self.indices, tables["labels"].shape[0])
        return sample_negative_counts(self.rng, self.labels, tables, num_negatives, self.rows)


class ScoredBank(NamedTuple):
    """The bank one side's embeddings are scored against, as it was before this step's update: `bank` (N, d)
    except for the rows `columns` (B,), the batch's, whose previous values are `rows` (B, d) (`updated` (N,):
    True at `columns`)."""

    bank: jax.Array
    updated: jax.Array
    columns: jax.Array
    rows: jax.Array

    def scores(self, embedding, positive_rows, counts, temperature):
        """exp(<w, v> / T) for embeddings v (R, d): of each row's positive w (`positive_rows` (R, d)), then
        [(scores (R, N), weights (R, N)), (scores (R, B), weights (R, B))], the negatives' scores with their
        multiplicities `counts` (R, N): against the bank's rows that are not `columns`, then against `rows`."""
        positive = jnp.exp(jnp.sum(embedding * positive_rows, axis=-1) / temperature)
        kept = jnp.exp(jnp.einsum("bd,nd->bn", embedding, self.bank) / temperature)
        previous = jnp.exp(jnp.einsum("bd,nd->bn", embedding, self.rows) / temperature)
        return positive, ((kept, jnp.where(self.updated, 0.0, counts)), (previous, counts[:, self.columns]))


def _nce_sum(embedding, positive_rows, scored: ScoredBank, z, counts, num_negatives: int, temperature):
    """One side's RepDistiller `ContrastLoss` times -B, summed over the rows given: Σ log(P+ / (P+ + c + eps))
    + Σ counts * log(c / (P- + c + eps)), P = score / Z, c = K / N."""
    noise = num_negatives * (1.0 / scored.bank.shape[0])  # c = K * Pn, Pn = 1/N
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature)
    p_positive = positive / z
    total = jnp.sum(jnp.log(p_positive / (p_positive + (noise + NCE_EPS))))
    for scores, weights in negatives:
        total += jnp.sum(weights * jnp.log(jnp.float32(noise) / (scores / z + (noise + NCE_EPS))))
    return total


def _score_sum(embedding, positive_rows, scored: ScoredBank, counts, temperature):
    """Σ of the scores of the rows' positives and (with multiplicity) negatives, for Z."""
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature)
    return jnp.sum(positive) + sum(jnp.sum(weights * scores) for scores, weights in negatives)


def _first_z(embed_student, embed_teacher, positive_rows, scored, tables, negatives: Negatives, chunks: int,
             num_negatives: int, temperature):
    """Z of both sides from this batch, mean(score) * N over its B (K + 1) scores, chunk by chunk."""
    def chunk_sums(rows, chunk_negatives):
        e_student, e_teacher, positive_student, positive_teacher = rows
        counts = chunk_negatives.counts(tables, num_negatives)
        return (_score_sum(e_student, positive_student, scored[0], counts, temperature),
                _score_sum(e_teacher, positive_teacher, scored[1], counts, temperature))

    sums = _map_chunks(chunk_sums, chunks, (embed_student, embed_teacher, *positive_rows), negatives)
    n, batch = tables["labels"].shape[0], embed_student.shape[0]
    return tuple(jnp.sum(side) / (batch * (num_negatives + 1)) * n for side in sums)


def _nce_losses_and_grads(embed_student, embed_teacher, positive_rows, scored, tables, z, negatives, temperature,
                          chunks: int, num_negatives: int):
    """Both sides' NCE loss and each one's gradient with respect to its embedding, chunk by chunk: the (rows, N)
    negatives, scores and their gradients exist for one chunk of rows at a time, and nothing (B, N) is kept
    for the backward pass."""
    batch = embed_student.shape[0]

    def chunk_losses(rows, chunk_negatives):
        e_student, e_teacher, positive_student, positive_teacher = rows
        counts = chunk_negatives.counts(tables, num_negatives)
        sum_student, grad_student = jax.value_and_grad(_nce_sum)(
            e_student, positive_student, scored[0], z[0], counts, num_negatives, temperature)
        sum_teacher, grad_teacher = jax.value_and_grad(_nce_sum)(
            e_teacher, positive_teacher, scored[1], z[1], counts, num_negatives, temperature)
        return sum_student, sum_teacher, grad_student, grad_teacher

    sums_student, sums_teacher, grads_student, grads_teacher = _map_chunks(
        chunk_losses, chunks, (embed_student, embed_teacher, *positive_rows), negatives)
    losses = (-jnp.sum(sums_student) / batch, -jnp.sum(sums_teacher) / batch)
    return losses, (-_from_chunks(grads_student) / batch, -_from_chunks(grads_teacher) / batch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _nce_losses(embed_student, embed_teacher, positive_rows, scored, tables, z, negatives, temperature, chunks,
                num_negatives):
    """(student side's loss, teacher side's loss); differentiable in the two embeddings only (the banks, Z and
    the negatives are constants), with gradients computed along with the losses."""
    return _nce_losses_and_grads(embed_student, embed_teacher, positive_rows, scored, tables, z, negatives,
                                 temperature, chunks, num_negatives)[0]


def _nce_losses_forward(*args):
    return _nce_losses_and_grads(*args)


def _nce_losses_backward(chunks, num_negatives, grads, cotangents):
    """The embeddings' gradients, saved by the forward pass, times the losses' cotangents; None: zero."""
    return (cotangents[0] * grads[0], cotangents[1] * grads[1], None, None, None, None, None, None)


_nce_losses.defvjp(_nce_losses_forward, _nce_losses_backward)


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
            _first_z(*fixed, positive_rows, scored, tables, negatives, chunks, num_negatives, temperature))),
        lambda: (state["z_student"], state["z_teacher"]))
    loss_student, loss_teacher = _nce_losses(embed_student, embed_teacher, positive_rows, scored, tables, z,
                                             negatives, temperature, chunks, num_negatives)
    metrics = {"nce_student": loss_student, "nce_teacher": loss_teacher, "z_student": z[0], "z_teacher": z[1]}
    if update:
        state = dict(state, **banks, z_student=z[0], z_teacher=z[1])
    return loss_student + loss_teacher, state, metrics


class CRD(Method):
    """The CRD term (weighted by beta; RepDistiller's CRD recipe: gamma 1, alpha 0, beta 0.8)."""

    name = "crd"
    uses_teacher = True
    metric_names = ("nce_student", "nce_teacher", "z_student", "z_teacher")  # each side's loss, and its Z

    def __init__(self, config):
        super().__init__(config)
        self.settings = crd_settings(config)
        self.embed = Embed(self.settings["feat_dim"])

    def init(self, rng, probe: Probe) -> MethodInit:
        if probe.teacher is None:
            raise UserError("CRD needs a teacher")
        student_rng, teacher_rng, state_rng = jax.random.split(rng, 3)
        params = {"embed_student": self.embed.init(student_rng, probe.student.pooled)["params"],
                  "embed_teacher": self.embed.init(teacher_rng, probe.teacher.pooled)["params"]}
        state = init_state(state_rng, probe.train_labels, self.settings["feat_dim"], self.settings["nce_k"])
        if "class_order" in state:
            warnings.warn(f"CRD: K = {self.settings['nce_k']} exceeds the other-class examples of some classes; "
                          f"their anchors draw negatives with replacement (as RepDistiller does)", stacklevel=2)
        return MethodInit({"params": params}, state)

    def embeddings(self, variables, student, teacher):
        params = variables["params"]
        return (self.embed.apply({"params": params["embed_student"]}, student.pooled),
                self.embed.apply({"params": params["embed_teacher"]}, teacher.pooled))

    def _term(self, variables, state, student, teacher, batch: Batch, positive, negatives: Negatives,
              num_negatives: int, train: bool) -> TermOutput:
        embed_student, embed_teacher = self.embeddings(variables, student, teacher)
        loss, state, metrics = contrast_term(
            embed_student, embed_teacher, state, positive, negatives, batch.index,
            num_negatives=num_negatives, temperature=self.settings["nce_t"], momentum=self.settings["nce_m"],
            update=train, chunk_elements=self.settings["chunk_elements"])
        return TermOutput(loss, variables.get("batch_stats", {}), state, metrics)

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
