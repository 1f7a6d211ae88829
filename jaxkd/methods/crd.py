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
- `crd.bank_layout`: "replicated" (every device holds both banks) or "sharded" (each device holds a block of
  their rows, and of the label tables: ImageNet's 1.28M rows; docs/methods.md, CRD).

The sampling and the chunked scoring, written for memory and speed, are in `jaxkd/methods/crd_kernels.py`.
"""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxkd.config.specs import fraction, one_of, positive_float, positive_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput, nested
from jaxkd.methods.crd_kernels import (ROW_TABLES, ROWS, ROWS_AXIS, WHOLE, BankBlocks, Negatives, RowShard, ScoredBank,
                                       bank_specs, batch_chunks, chunked_loss_pair, map_chunks, table_specs)
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



def init_state(rng, train_labels, feat_dim: int, num_negatives: int, row_multiple: int = 1) -> dict:
    """The method state: both banks U(-s, s), s = 1/sqrt(feat_dim/3), Z = -1 (unset), the training labels
    (which examples may be an anchor's negatives) and, only when some class's pool of other-class examples
    is smaller than K, the tables for sampling with replacement (class-sorted dataset order, class starts
    and sizes). `row_multiple`: the banks and the row tables padded to a multiple of that many rows (the sharded
    layout's devices; padding: bank rows 0, label -1, never drawn), the first N rows as without padding."""
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
    padding = -n % row_multiple
    if padding:
        fill = {"labels": -1}
        for name in ("bank_student", "bank_teacher", *ROW_TABLES):
            if name in state:
                widths = [(0, padding)] + [(0, 0)] * (state[name].ndim - 1)
                state[name] = jnp.pad(state[name], widths, constant_values=fill.get(name, 0))
    return state


def once(total, shard: RowShard | None):
    """`total` on the first device only (sharded layout): a term of the positives, which every device computes,
    counted once when the devices' sums are added."""
    return total if shard is None else jnp.where(jax.lax.axis_index(shard.axis) == 0, total, 0.0)


def nce_sum(embedding, positive_rows, scored: ScoredBank, z, counts, num_negatives: int, temperature,
            shard: RowShard | None = None):
    """One side's RepDistiller `ContrastLoss` times -B, summed over the rows given: Σ log(P+ / (P+ + c + eps))
    + Σ counts * log(c / (P- + c + eps)), P = score / Z, c = K / N (`shard`: this device's part of the sum)."""
    n = scored.bank.shape[0] if shard is None else shard.total
    noise = num_negatives * (1.0 / n)  # c = K * Pn, Pn = 1/N
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature, shard)
    p_positive = positive / z
    total = once(jnp.sum(jnp.log(p_positive / (p_positive + (noise + NCE_EPS)))), shard)
    for scores, weights in negatives:
        total += jnp.sum(weights * jnp.log(jnp.float32(noise) / (scores / z + (noise + NCE_EPS))))
    return total


def score_sum(embedding, positive_rows, scored: ScoredBank, counts, temperature, shard: RowShard | None = None):
    """Σ of the scores of the rows' positives and (with multiplicity) negatives, for Z."""
    positive, negatives = scored.scores(embedding, positive_rows, counts, temperature, shard)
    return once(jnp.sum(positive), shard) + sum(jnp.sum(weights * scores) for scores, weights in negatives)


def first_z(embed_student, embed_teacher, positive_rows, scored, tables, negatives: Negatives, chunks: int,
             num_negatives: int, temperature, blocks: BankBlocks | None = None):
    """Z of both sides from this batch, mean(score) * N over its B (K + 1) scores, chunk by chunk (`blocks`:
    each device's block of the banks, the sums added over the devices)."""
    shard = None if blocks is None else blocks.shard

    def side_sums(rows, scored, tables, negatives):
        def chunk_sums(rows, chunk_negatives):
            e_student, e_teacher, positive_student, positive_teacher = rows
            counts = chunk_negatives.counts(tables, num_negatives, shard)
            return (score_sum(e_student, positive_student, scored[0], counts, temperature, shard),
                    score_sum(e_teacher, positive_teacher, scored[1], counts, temperature, shard))

        sums = map_chunks(chunk_sums, chunks, rows, negatives)
        return sums if shard is None else shard.sum(tuple(jnp.sum(side) for side in sums))

    rows = (embed_student, embed_teacher, *positive_rows)
    if blocks is None:
        sums, n = side_sums(rows, scored, tables, negatives), tables["labels"].shape[0]
    else:
        sums = blocks.run(side_sums, (WHOLE, bank_specs(scored), table_specs(tables), WHOLE), WHOLE)(
            rows, scored, tables, negatives)
        n = blocks.total
    batch = embed_student.shape[0]
    return tuple(jnp.sum(side) / (batch * (num_negatives + 1)) * n for side in sums)


def moved_rows(previous, embedding, momentum):
    """The bank rows after the update: normalize(m * previous + (1 - m) * embedding)."""
    return l2_normalize(previous * momentum + jax.lax.stop_gradient(embedding) * (1.0 - momentum))


def replicated_banks(state: dict, embed_student, embed_teacher, positive, index, momentum: float, update: bool):
    """(banks after the update, both `ScoredBank`s, the positives' rows) with every bank whole on each device."""
    banks = {name: state[name] for name in ("bank_student", "bank_teacher")}
    if update:
        def moved(bank, embedding):
            return bank.at[index].set(moved_rows(bank[index], embedding, momentum))

        banks = {"bank_student": moved(state["bank_student"], embed_student),
                 "bank_teacher": moved(state["bank_teacher"], embed_teacher)}
    updated = jnp.zeros(state["labels"].shape, bool).at[index].set(True)
    scored = (ScoredBank(banks["bank_teacher"], updated, index, state["bank_teacher"][index]),
              ScoredBank(banks["bank_student"], updated, index, state["bank_student"][index]))
    return banks, scored, (state["bank_teacher"][positive], state["bank_student"][positive])


def sharded_banks(blocks: BankBlocks, state: dict, embed_student, embed_teacher, positive, index, momentum: float,
                  update: bool):
    """`replicated_banks` for row-sharded banks: each device gathers the batch's and the positives' rows from
    its block (summed over the devices: B rows per bank move between devices) and updates the rows it holds."""
    shard = blocks.shard

    def on_block(bank_student, bank_teacher, embed_student, embed_teacher, positive, index):
        previous = (shard.take(bank_student, index), shard.take(bank_teacher, index))
        positive_rows = (shard.take(bank_teacher, positive), shard.take(bank_student, positive))
        position, owned = shard.local(index)
        position = jnp.where(owned, position, shard.rows)  # out of range: dropped
        updated = jnp.zeros((shard.rows,), bool).at[position].set(True, mode="drop")
        if update:
            bank_student = bank_student.at[position].set(moved_rows(previous[0], embed_student, momentum),
                                                         mode="drop")
            bank_teacher = bank_teacher.at[position].set(moved_rows(previous[1], embed_teacher, momentum),
                                                         mode="drop")
        return (bank_student, bank_teacher), updated, previous, positive_rows

    (bank_student, bank_teacher), updated, previous, positive_rows = blocks.run(
        on_block, (ROWS, ROWS, WHOLE, WHOLE, WHOLE, WHOLE), ((ROWS, ROWS), ROWS, WHOLE, WHOLE))(
        state["bank_student"], state["bank_teacher"], jax.lax.stop_gradient(embed_student),
        jax.lax.stop_gradient(embed_teacher), positive, index)
    scored = (ScoredBank(bank_teacher, updated, index, previous[1]),
              ScoredBank(bank_student, updated, index, previous[0]))
    return {"bank_student": bank_student, "bank_teacher": bank_teacher}, scored, positive_rows


def contrast_term(embed_student, embed_teacher, state: dict, positive, negatives: Negatives, index, *,
                  num_negatives: int, temperature: float, momentum: float, update: bool = True,
                  chunk_elements: int | None = None, blocks: BankBlocks | None = None):
    """RepDistiller's `ContrastMemory` + two `ContrastLoss`es on normalized embeddings (B, d).

    `positive` (B,) are the positives' bank rows (column 0 of contrast_idx), `negatives` where the K negatives
    of each row come from, `index` (B,) the batch's dataset indices (distinct), whose bank rows are updated
    (when `update`) with the scores computed from their previous values. Returns (loss, new state, metrics).
    `blocks`: the banks and row tables are row-sharded (`sharded_banks`; the sums over the rows are added up
    over the devices), else whole on every device.

    Memory: the batch is scored in chunks of rows (`batch_chunks`), so that the (rows, N) temporaries stay
    small (N: the rows a device holds). The banks are updated first and the chunks score the updated banks,
    with the B updated rows' scores recomputed from their saved previous values: XLA then updates the donated
    banks in place, where loops reading the banks before the update would each need a copy of them."""
    temperature = jnp.float32(temperature)  # RepDistiller keeps T in a float32 buffer
    rows_held = state["labels"].shape[0] if blocks is None else blocks.shard.rows
    chunks = batch_chunks(embed_student.shape[0], rows_held, chunk_elements or CHUNK_ELEMENTS)
    tables = {name: value for name, value in state.items() if not name.startswith("bank_")}
    # The student embedding is scored against the teacher bank (out_v1, Z_v1), the teacher's against the
    # student bank; both against the banks before this step's update.
    if blocks is None:
        banks, scored, positive_rows = replicated_banks(state, embed_student, embed_teacher, positive, index,
                                                        momentum, update)
    else:
        banks, scored, positive_rows = sharded_banks(blocks, state, embed_student, embed_teacher, positive, index,
                                                     momentum, update)
    scored, positive_rows = jax.lax.stop_gradient((scored, positive_rows))
    # Z = mean over the batch's B (K+1) scores, times N, on the first call only (Z < 0: unset); then a constant.
    fixed = jax.lax.stop_gradient((embed_student, embed_teacher))
    z = jax.lax.cond(
        (state["z_student"] < 0) | (state["z_teacher"] < 0),
        lambda: tuple(jnp.where(z < 0, first, z) for z, first in zip(
            (state["z_student"], state["z_teacher"]),
            first_z(*fixed, positive_rows, scored, tables, negatives, chunks, num_negatives, temperature,
                    blocks))),
        lambda: (state["z_student"], state["z_teacher"]))
    shard = None if blocks is None else blocks.shard

    def side_sum(embedding, rows, constants, counts):
        return nce_sum(embedding, rows, *constants, counts, num_negatives, temperature, shard)

    loss_student, loss_teacher = chunked_loss_pair(side_sum, chunks, num_negatives, blocks,
                                                   (embed_student, embed_teacher), positive_rows,
                                                   ((scored[0], z[0]), (scored[1], z[1])), tables, negatives)
    metrics = {"nce_student": loss_student, "nce_teacher": loss_teacher, "z_student": z[0], "z_teacher": z[1]}
    if update:
        state = dict(state, **banks, z_student=z[0], z_teacher=z[1])
    return loss_student + loss_teacher, state, metrics


class CRD(Method):
    """The CRD term (weighted by beta; RepDistiller's CRD recipe: gamma 1, alpha 0, beta 0.8)."""

    display_name = "CRD"
    uses_teacher = True
    # RepDistiller's train_student.py, the chunk bound and the banks' layout (memory settings, not the recipe's)
    defaults = {"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "feat_dim": 128, "chunk_elements": CHUNK_ELEMENTS,
                "bank_layout": "replicated"}
    specs = {"nce_k": positive_int, "nce_t": positive_float, "nce_m": fraction, "feat_dim": positive_int,
             "chunk_elements": positive_int, "bank_layout": one_of("replicated", "sharded")}
    num_examples = None  # N, set by `init` (the sharded layout's banks hold padding beyond it)

    @property
    def sharded(self) -> bool:
        return self.settings["bank_layout"] == "sharded"

    @property
    def shards_state(self) -> bool:
        return self.sharded

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
        self.num_examples = len(probe.train_labels)
        # sharded: rows padded for any mesh over this process's devices' count (the engine's: all of them)
        state = init_state(jax.random.split(rng, 3)[2], probe.train_labels, self.settings["feat_dim"],
                           self.settings["nce_k"], jax.device_count() if self.sharded else 1)
        if "class_order" in state:
            warnings.warn(f"CRD: K = {self.settings['nce_k']} exceeds the other-class examples of some classes; "
                          f"their anchors draw negatives with replacement (as RepDistiller does)", stacklevel=2)
        return MethodInit(super().init(rng, probe).variables, state)

    def state_sharding(self, mesh, state: dict):
        """Sharded layout: the banks and the row tables split by rows over the mesh's `data` axis, the rest
        replicated; a mesh whose devices do not divide the padded rows is refused."""
        if not self.sharded:
            return super().state_sharding(mesh, state)
        rows, devices = state["labels"].shape[0], mesh.shape[ROWS_AXIS]
        if rows % devices:
            raise UserError(f"crd.bank_layout 'sharded': the {devices} devices do not divide the banks' {rows} "
                            f"rows (padded for {jax.device_count()} devices)")
        return {name: NamedSharding(mesh, ROWS if name.startswith("bank_") or name in ROW_TABLES else WHOLE)
                for name in state}

    def check_saved_state(self, saved: dict, num_examples: int) -> None:
        """Sharded layout: a checkpoint's banks padded for another device count (their rows: N rounded up to a
        multiple of the devices they were written on) is one UserError naming both counts, instead of Orbax's
        shape error at restore. (Re-padding on restore would be exact, the padding rows being label -1 and never
        drawn; it is not done: the restore is the engine's, for every method alike.)"""
        bank = saved.get("bank_student")
        if not self.sharded or bank is None:
            return
        devices = jax.device_count()
        rows = num_examples + (-num_examples % devices)
        if bank.shape[0] == rows:
            return
        saved_rows = bank.shape[0]
        mesh_shape = getattr(bank.sharding, "shape", None)  # Orbax's NamedShardingMetadata: the saved mesh
        saved_devices = int(math.prod(mesh_shape)) if mesh_shape is not None else None
        if saved_devices is None or num_examples + (-num_examples % saved_devices) != saved_rows:
            written_on, resume_on = "the devices it was written on", "those devices"
        else:
            resume_on = f"{saved_devices} device{'s' if saved_devices != 1 else ''}"
            written_on = f"the {resume_on} it was written on"
        raise UserError(f"crd.bank_layout 'sharded': the checkpoint's memory banks hold {saved_rows} rows, the "
                        f"{num_examples} examples padded for {written_on}; this run has {devices} device(s) "
                        f"({rows} rows): resume it on {resume_on} (or on any device count that pads {num_examples} "
                        f"rows to {saved_rows})")

    def bank_blocks(self, state: dict) -> BankBlocks | None:
        """The sharded layout's blocks on the banks' mesh (inside jit, from their type; a one-device mesh when
        they carry none), None for the replicated layout."""
        if not self.sharded:
            return None
        if self.num_examples is None:
            raise RuntimeError("CRD.init sets N before a sharded term")
        mesh = jax.typeof(state["bank_student"]).sharding.mesh
        if ROWS_AXIS not in mesh.axis_names:
            mesh = jax.make_mesh((1,), (ROWS_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                                 devices=jax.devices()[:1]).abstract_mesh
        return BankBlocks(mesh, self.num_examples, state["labels"].shape[0])

    def embeddings(self, variables, student, teacher):
        return self.apply_module_of(variables, student, teacher, train=False)[0]

    def _term(self, variables, state, student, teacher, batch: Batch, positive, negatives: Negatives,
              num_negatives: int, train: bool) -> TermOutput:
        embed_student, embed_teacher = self.embeddings(variables, student, teacher)
        loss, state, metrics = contrast_term(
            embed_student, embed_teacher, state, positive, negatives, batch.index,
            num_negatives=num_negatives, temperature=self.settings["nce_t"], momentum=self.settings["nce_m"],
            update=train, chunk_elements=self.settings["chunk_elements"], blocks=self.bank_blocks(state))
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
