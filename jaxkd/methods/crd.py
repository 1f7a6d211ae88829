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
  negatives enter as a (B, N) weight matrix `negative_counts` (1 per draw, 0 elsewhere). Gathering the
  (B, K+1, 128) bank rows as RepDistiller does costs 1052 MiB and 760 ms (forward + backward + update),
  this 98 MiB and 115 ms; same sums in another order. The matmul stays cheaper up to N ~ 700,000.
- Sampling without replacement: a uniform K-subset of an anchor's other-class pool is the K largest of
  i.i.d. 32-bit keys, one per (anchor, dataset row) like the scores. The K-th largest is found exactly by a
  32-pass radix select (counting only) and the subset kept as the (B, N) mask: 106 ms, against 285 ms for
  `lax.top_k`, 617 ms for a sort, 1190 ms for `jax.random.choice(replace=False)`; Floyd's algorithm or a
  partial Fisher-Yates avoid the keys but take K sequential steps. Keys tied at the threshold (probability
  ~N / 2^32 per row) are taken in dataset order. Whole term: 208 ms / 89 MiB (top-k + gather: 982 / 1052).

`contrast_term` is the whole computation given the positives and the negatives' weights; `CRD.term` samples
the negatives and calls it, `CRD.term_with_indices` takes RepDistiller's explicit (B, K+1) `contrast_idx`.
"""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput
from jaxkd.models.resnet import linear_init

DEFAULTS = {"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "feat_dim": 128}  # RepDistiller's train_student.py
NCE_EPS = 1e-7


def crd_settings(config) -> dict:
    """`config.crd` over RepDistiller's defaults (a config without a `crd` section gets the defaults)."""
    section = config.get("crd", None) if config is not None else None
    settings = dict(DEFAULTS)
    if section is not None:
        unknown = sorted(set(section.keys()) - set(DEFAULTS))
        if unknown:
            raise UserError(f"unknown config.crd keys {unknown}; known: {sorted(DEFAULTS)}")
        settings.update({name: section[name] for name in section.keys()})
    if settings["nce_k"] < 1 or settings["feat_dim"] < 1 or settings["nce_t"] <= 0:
        raise UserError(f"config.crd needs nce_k >= 1, feat_dim >= 1 and nce_t > 0 (got {settings})")
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


def _replacement_draws(rng, anchor_labels, state: dict, num_negatives: int):
    """(B, K) dataset indices drawn uniformly WITH replacement from each anchor's other-class examples: a
    position p in the pool (the dataset in class order without the anchor's class) maps to class_order[p],
    shifted past the anchor's own class."""
    start = state["class_start"][anchor_labels][:, None]
    size = state["class_size"][anchor_labels][:, None]
    pool = state["labels"].shape[0] - size
    position = jax.random.randint(rng, (anchor_labels.shape[0], num_negatives), 0, pool)
    return state["class_order"][jnp.where(position >= start, position + size, position)]


def _sample(rng, anchor_labels, state: dict, num_negatives: int):
    """(without-replacement mask (B, N), with-replacement draws (B, K) or None, rows drawing with replacement)."""
    keys_rng, replacement_rng = jax.random.split(rng)
    labels = state["labels"]
    allowed = labels[None, :] != anchor_labels[:, None]
    keys = jax.random.bits(keys_rng, allowed.shape, jnp.uint32)
    mask = top_k_mask(keys, allowed, num_negatives)
    if "class_order" not in state:
        return mask, None, None
    pool_size = labels.shape[0] - state["class_size"][anchor_labels]
    return mask, _replacement_draws(replacement_rng, anchor_labels, state, num_negatives), pool_size < num_negatives


def sample_negative_counts(rng, anchor_labels, state: dict, num_negatives: int):
    """(B, N) float32: how often each dataset row is a negative of each anchor. K distinct other-class rows
    (a 0/1 mask) for every anchor whose class leaves >= K other examples; otherwise K draws with replacement."""
    mask, draws, with_replacement = _sample(rng, anchor_labels, state, num_negatives)
    counts = mask.astype(jnp.float32)
    if draws is None:
        return counts
    return jnp.where(with_replacement[:, None], counts_from_indices(draws, counts.shape[1]), counts)


def sample_contrast_indices(rng, anchor_labels, index, state: dict, num_negatives: int):
    """RepDistiller's `sample_idx` batch for the same draws as `sample_negative_counts(rng, ...)`: (B, K+1)
    int32, the positive (the example itself) in column 0, then the K negatives (in dataset order when drawn
    without replacement). For tests and inspection; the training step uses the counts."""
    mask, draws, with_replacement = _sample(rng, anchor_labels, state, num_negatives)
    distinct = jax.vmap(lambda row: jnp.nonzero(row, size=num_negatives, fill_value=-1)[0])(mask)
    negatives = distinct if draws is None else jnp.where(with_replacement[:, None], draws, distinct)
    return jnp.concatenate([index[:, None], negatives], axis=1).astype(jnp.int32)


def counts_from_indices(negative_indices, num_rows: int):
    """(B, K) dataset indices -> (B, N) float32 multiplicities."""
    rows = jnp.arange(negative_indices.shape[0])[:, None]
    return jnp.zeros((negative_indices.shape[0], num_rows), jnp.float32).at[rows, negative_indices].add(1.0)


def _nce_side(embedding, bank, z, positive, negative_counts, num_negatives: int, temperature):
    """One side of the contrast: scores exp(<w, v>/T) of `embedding` against every row of the (other side's)
    `bank`, Z (set from these scores if still unset), and RepDistiller's `ContrastLoss` of P = score / Z.
    Returns (loss, Z)."""
    n = bank.shape[0]
    batch = embedding.shape[0]
    scores = jnp.exp(jnp.einsum("bd,nd->bn", embedding, jax.lax.stop_gradient(bank)) / temperature)
    positive_scores = jnp.take_along_axis(scores, positive[:, None], axis=1)[:, 0]
    # Z = mean over the batch's B (K+1) scores, times N, on the first call only; then a constant.
    first_z = (jnp.sum(positive_scores) + jnp.sum(negative_counts * scores)) / (batch * (num_negatives + 1)) * n
    z = jnp.where(z < 0, jax.lax.stop_gradient(first_z), z)
    noise = num_negatives * (1.0 / n)  # c = K * Pn, Pn = 1/N
    p_positive = positive_scores / z
    log_positive = jnp.log(p_positive / (p_positive + (noise + NCE_EPS)))
    log_negative = jnp.log(jnp.float32(noise) / (scores / z + (noise + NCE_EPS)))
    loss = -(jnp.sum(log_positive) + jnp.sum(negative_counts * log_negative)) / batch
    return loss, z


def contrast_term(embed_student, embed_teacher, state: dict, positive, negative_counts, index, *,
                  num_negatives: int, temperature: float, momentum: float, update: bool = True):
    """RepDistiller's `ContrastMemory` + two `ContrastLoss`es on normalized embeddings (B, d).

    `positive` (B,) are the positives' bank rows (column 0 of contrast_idx), `negative_counts` (B, N) the
    negatives' multiplicities (K per row), `index` (B,) the batch's dataset indices, whose bank rows are
    updated (when `update`) after scoring. Returns (loss, new state, metrics)."""
    temperature = jnp.float32(temperature)  # RepDistiller keeps T in a float32 buffer
    # The student embedding against the teacher bank (out_v1, Z_v1), the teacher's against the student bank.
    loss_student, z_student = _nce_side(embed_student, state["bank_teacher"], state["z_student"], positive,
                                        negative_counts, num_negatives, temperature)
    loss_teacher, z_teacher = _nce_side(embed_teacher, state["bank_student"], state["z_teacher"], positive,
                                        negative_counts, num_negatives, temperature)
    metrics = {"nce_student": loss_student, "nce_teacher": loss_teacher, "z_student": z_student,
               "z_teacher": z_teacher}
    if not update:
        return loss_student + loss_teacher, state, metrics

    def moved(bank, embedding):
        rows = bank[index] * momentum + jax.lax.stop_gradient(embedding) * (1.0 - momentum)
        return bank.at[index].set(l2_normalize(rows))

    state = dict(state, bank_student=moved(state["bank_student"], embed_student),
                 bank_teacher=moved(state["bank_teacher"], embed_teacher), z_student=z_student,
                 z_teacher=z_teacher)
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

    def _term(self, variables, state, student, teacher, batch: Batch, positive, negative_counts,
              num_negatives: int, train: bool) -> TermOutput:
        embed_student, embed_teacher = self.embeddings(variables, student, teacher)
        loss, state, metrics = contrast_term(
            embed_student, embed_teacher, state, positive, negative_counts, batch.index,
            num_negatives=num_negatives, temperature=self.settings["nce_t"], momentum=self.settings["nce_m"],
            update=train)
        return TermOutput(loss, variables.get("batch_stats", {}), state, metrics)

    def term(self, variables, state, student, teacher, batch: Batch, train: bool) -> TermOutput:
        k = self.settings["nce_k"]
        counts = sample_negative_counts(batch.rng, batch.labels, state, k)
        return self._term(variables, state, student, teacher, batch, batch.index, counts, k, train)

    def term_with_indices(self, variables, state, student, teacher, batch: Batch, contrast_idx,
                          train: bool = True) -> TermOutput:
        """The term for RepDistiller's explicit `contrast_idx` (B, K+1): positives in column 0."""
        counts = counts_from_indices(contrast_idx[:, 1:], state["bank_student"].shape[0])
        return self._term(variables, state, student, teacher, batch, contrast_idx[:, 0], counts,
                          contrast_idx.shape[1] - 1, train)
