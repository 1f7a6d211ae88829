"""CRD's negative sampling and chunked scoring: the computation behind `jaxkd/methods/crd.py`, written for
memory (nothing (B, N) lives at once, nothing (B, N) is kept for the backward pass) and speed on every backend.
Measurements and the reasons for each choice: benchmarks/crd_memory.md.

- Sampling: a uniform K-subset of an anchor's other-class examples is the K largest of i.i.d. 32-bit keys, one
  per (anchor, dataset row): Threefry-2x32 of (row, anchor's batch position) under the step's key, written out
  so that XLA fuses it. The K-th largest key is found by a 32-pass radix select (`top_k_mask`, counting only);
  anchors whose class leaves fewer than K others draw with replacement (RepDistiller's `np.random.choice`).
- Negatives enter as (rows, N) counts (how often each dataset row is drawn), so one matmul scores an embedding
  against a whole bank (`ScoredBank`).
- The batch goes through sampling and scoring in chunks of rows (`map_chunks`), and `chunked_loss_pair` computes
  a loss's gradient with respect to the embeddings in the same pass (a custom VJP).
- Sharded banks (`config.crd.bank_layout = "sharded"`): every function that reads the dataset's rows also runs
  on one device's block of them inside a `shard_map` (`RowShard`; `BankBlocks` sets it up): the same keys, masks
  and counts, the sums over the rows added up over the devices (`psum`).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

ROWS_AXIS = "data"  # the data mesh's axis (jaxkd/engine/mesh.py), over which sharded banks split their rows


@dataclasses.dataclass(frozen=True)
class RowShard:
    """Inside a `shard_map` over `axis`: this device holds rows offset .. offset + `rows` - 1 of the dataset's
    (padded) rows, of which the first `total` are examples (the padding's labels are -1)."""

    axis: str
    rows: int
    total: int

    @property
    def offset(self):
        return jax.lax.axis_index(self.axis) * self.rows

    def sum(self, x):
        """`x` summed over the devices."""
        return jax.lax.psum(x, self.axis)

    def earlier(self, x):
        """`x` summed over the devices before this one (for a prefix sum along the rows)."""
        gathered = jax.lax.all_gather(x, self.axis)
        before = jnp.arange(gathered.shape[0]) < jax.lax.axis_index(self.axis)
        return jnp.sum(jnp.where(before.reshape(-1, *[1] * x.ndim), gathered, 0), axis=0)

    def local(self, indices):
        """(positions of the dataset rows `indices` in this block, whether this block holds them)."""
        position = indices - self.offset
        return position, (position >= 0) & (position < self.rows)

    def take(self, table, indices):
        """table[indices] for a row-sharded `table`: each device's own rows, zero elsewhere, summed over the
        devices (exact: one nonzero term per row)."""
        position, owned = self.local(indices)
        rows = table[jnp.where(owned, position, 0)]
        return self.sum(jnp.where(owned.reshape(*owned.shape, *[1] * (rows.ndim - owned.ndim)), rows, 0))


@dataclasses.dataclass(frozen=True)
class BankBlocks:
    """CRD's row-sharded layout on `mesh` (its `data` axis): the banks, the updated-row mask and the row tables
    (`ROW_TABLES`) split in equal blocks of rows, `total` examples padded to a multiple of the devices."""

    mesh: jax.sharding.AbstractMesh
    total: int
    padded: int

    @property
    def shard(self) -> RowShard:
        return RowShard(ROWS_AXIS, self.padded // self.mesh.shape[ROWS_AXIS], self.total)

    def run(self, body, in_specs, out_specs):
        """`body` on every device's block (`shard_map`); specs: `ROWS` for row-sharded, `WHOLE` for the rest.
        Without replication checks: a gradient taken inside `body` stays this device's part (with them, JAX
        would sum it over the devices where a whole input meets a sharded one), and `body` sums what it
        returns whole itself (`RowShard.sum`)."""
        return jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


ROWS, WHOLE = PartitionSpec(ROWS_AXIS), PartitionSpec()
ROW_TABLES = ("labels", "class_order")  # the method state's O(N) tables besides the banks


def table_specs(tables: dict) -> dict:
    return {name: ROWS if name in ROW_TABLES else WHOLE for name in tables}


def top_k_mask(keys, allowed, k: int, shard: RowShard | None = None):
    """Boolean mask of the k largest `keys` (uint32, (B, N)) among the `allowed` entries of every row, found
    by radix select: bit by bit from the top, the threshold is the largest value with >= k allowed keys at or
    above it (32 counting passes, no sort). Rows with fewer than k allowed entries get all of them. Keys equal
    to the threshold are taken in index order, as many as are still needed. `shard`: the keys are this device's
    block of columns; the counts are summed over the devices (the same mask, exactly)."""
    def total(count):
        return count if shard is None else shard.sum(count)

    def refine(bit, threshold):
        candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
        count = total(jnp.sum(allowed & (keys >= candidate[:, None]), axis=1))
        return jnp.where(count >= k, candidate, threshold)

    threshold = jax.lax.fori_loop(0, 32, refine, jnp.zeros(keys.shape[:1], jnp.uint32))
    above = allowed & (keys > threshold[:, None])
    at = allowed & (keys == threshold[:, None])
    needed = k - total(jnp.sum(above, axis=1))

    def break_ties(_):
        rank = jnp.cumsum(at, axis=1)
        if shard is not None:
            rank = rank + shard.earlier(jnp.sum(at, axis=1))[:, None]
        return above | (at & (rank <= needed[:, None]))

    has_ties = jnp.any(total(jnp.sum(at, axis=1)) > needed)
    return jax.lax.cond(has_ties, break_ties, lambda _: above | at, None)


def batch_chunks(batch: int, num_rows: int, chunk_elements: int) -> int:
    """How many chunks the sampler and the scoring split a batch of `batch` anchors into: the fewest (a divisor
    of `batch`) whose chunks of rows hold at most `chunk_elements` (anchor, dataset row) pairs; one row each
    if even that is too many."""
    for chunks in range(1, batch + 1):
        if batch % chunks == 0 and (batch // chunks) * num_rows <= chunk_elements:
            return chunks
    return batch


def to_chunks(x, chunks: int):
    """(B, ...) -> (chunks, B / chunks, ...), chunk j holding rows j, j + chunks, j + 2 chunks, ... (so that a
    batch sharded in blocks over devices stays sharded along each chunk's rows)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), 0, 1)


def from_chunks(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def map_chunks(body, chunks: int, rows, negatives):
    """`jax.lax.map` of body(rows, negatives) over chunks of the batch's rows: `rows` a tuple of (B, ...) arrays,
    `negatives` a `Negatives` (its key, if any, shared by the chunks: an anchor's draws depend on the key and its
    batch position only)."""
    rng = negatives.rng
    inputs = jax.tree.map(lambda x: to_chunks(x, chunks), (rows, negatives._replace(rng=None)))
    return jax.lax.map(lambda chunk: body(chunk[0], chunk[1]._replace(rng=rng)), inputs)


def _replacement_draws(rng, rows, anchor_labels, state: dict, num_negatives: int, shard: RowShard | None = None):
    """(R, K) dataset indices drawn uniformly WITH replacement from each anchor's other-class examples (row
    `rows[i]` of the batch from its own key): a position p in the pool (the dataset in class order without the
    anchor's class) maps to class_order[p], shifted past the anchor's own class."""
    start = state["class_start"][anchor_labels][:, None]
    size = state["class_size"][anchor_labels][:, None]
    pool = _num_examples(state, shard) - size
    position = jax.vmap(lambda row, high: jax.random.randint(jax.random.fold_in(rng, row), (num_negatives,), 0,
                                                             high))(rows, pool[:, 0])
    position = jnp.where(position >= start, position + size, position)
    return state["class_order"][position] if shard is None else shard.take(state["class_order"], position)


def _num_examples(state: dict, shard: RowShard | None) -> int:
    return state["labels"].shape[0] if shard is None else shard.total


def threefry2x32(key, x0, x1):
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


def _sample(rng, rows, anchor_labels, state: dict, num_negatives: int, shard: RowShard | None = None):
    """For the anchors at batch positions `rows` (R,) with labels `anchor_labels`: (without-replacement mask
    (R, N), with-replacement draws (R, K) or None, rows drawing with replacement). The key of anchor `row` for
    dataset row n is Threefry(key, (n, row)): i.i.d. uniform 32-bit keys that do not depend on how the batch is
    chunked (nor on how the rows are sharded: `shard`, the mask's columns are this device's block)."""
    keys_rng, replacement_rng = jax.random.split(rng)
    labels = state["labels"]
    allowed = labels[None, :] != anchor_labels[:, None]
    counters = jnp.arange(labels.shape[0], dtype=jnp.uint32)[None, :]
    if shard is not None:  # global row numbers; the padding (label -1) is never a negative
        allowed &= labels[None, :] >= 0
        counters = counters + shard.offset.astype(jnp.uint32)
    keys = threefry2x32(_key_words(keys_rng), counters,
                         jnp.broadcast_to(rows.astype(jnp.uint32)[:, None], allowed.shape))[0]
    mask = top_k_mask(keys, allowed, num_negatives, shard)
    if "class_order" not in state:
        return mask, None, None
    pool_size = _num_examples(state, shard) - state["class_size"][anchor_labels]
    return (mask, _replacement_draws(replacement_rng, rows, anchor_labels, state, num_negatives, shard),
            pool_size < num_negatives)


def sample_negative_counts(rng, anchor_labels, state: dict, num_negatives: int, rows=None,
                           shard: RowShard | None = None):
    """(R, N) float32: how often each dataset row is a negative of each anchor. K distinct other-class rows
    (a 0/1 mask) for every anchor whose class leaves >= K other examples; otherwise K draws with replacement.
    `rows`: the anchors' positions in the batch (default 0..R-1), which pick their random streams. `shard`:
    the columns of this device's block of rows only."""
    rows = jnp.arange(anchor_labels.shape[0]) if rows is None else rows
    mask, draws, with_replacement = _sample(rng, rows, anchor_labels, state, num_negatives, shard)
    counts = mask.astype(jnp.float32)
    if draws is None:
        return counts
    return jnp.where(with_replacement[:, None], counts_from_indices(draws, counts.shape[1], shard), counts)


def sample_contrast_indices(rng, anchor_labels, index, state: dict, num_negatives: int):
    """RepDistiller's `sample_idx` batch for the same draws as `sample_negative_counts(rng, ...)`: (B, K+1)
    int32, the positive (the example itself) in column 0, then the K negatives (in dataset order when drawn
    without replacement). For tests and inspection; the training step uses the counts."""
    mask, draws, with_replacement = _sample(rng, jnp.arange(anchor_labels.shape[0]), anchor_labels, state,
                                            num_negatives)
    distinct = jax.vmap(lambda row: jnp.nonzero(row, size=num_negatives, fill_value=-1)[0])(mask)
    negatives = distinct if draws is None else jnp.where(with_replacement[:, None], draws, distinct)
    return jnp.concatenate([index[:, None], negatives], axis=1).astype(jnp.int32)


def counts_from_indices(negative_indices, num_rows: int, shard: RowShard | None = None):
    """(B, K) dataset indices -> (B, N) float32 multiplicities (`shard`: of this device's `num_rows` rows)."""
    rows = jnp.arange(negative_indices.shape[0])[:, None]
    counts = jnp.zeros((negative_indices.shape[0], num_rows), jnp.float32)
    if shard is None:
        return counts.at[rows, negative_indices].add(1.0)
    position, owned = shard.local(negative_indices)
    return counts.at[rows, jnp.where(owned, position, num_rows)].add(1.0, mode="drop")


class Negatives(NamedTuple):
    """Where each anchor's negatives come from, computed chunk by chunk as (rows, N) counts: drawn by the
    sampler (`rng` given; `rows` the anchors' batch positions, `labels` their classes) or RepDistiller's
    explicit (B, K) indices (`indices` given)."""

    rows: jax.Array
    labels: jax.Array
    rng: jax.Array | None = None
    indices: jax.Array | None = None

    def counts(self, tables: dict, num_negatives: int, shard: RowShard | None = None):
        """(rows, N) float32 multiplicities; `tables`: the method state without the banks (`shard`: this
        device's blocks of the row tables, and of the counts' columns)."""
        if self.indices is not None:
            return counts_from_indices(self.indices, tables["labels"].shape[0], shard)
        return sample_negative_counts(self.rng, self.labels, tables, num_negatives, self.rows, shard)


class ScoredBank(NamedTuple):
    """The bank one side's embeddings are scored against, as it was before this step's update: `bank` (N, d)
    except for the rows `columns` (B,), the batch's, whose previous values are `rows` (B, d) (`updated` (N,):
    True at `columns`)."""

    bank: jax.Array
    updated: jax.Array
    columns: jax.Array
    rows: jax.Array

    def scores(self, embedding, positive_rows, counts, temperature, shard: RowShard | None = None):
        """exp(<w, v> / T) for embeddings v (R, d): of each row's positive w (`positive_rows` (R, d)), then
        [(scores (R, N), weights (R, N)), (scores (R, B), weights (R, B))], the negatives' scores with their
        multiplicities `counts` (R, N): against the bank's rows that are not `columns`, then against `rows`.
        `shard`: `bank`, `updated` and `counts` are this device's block of rows; `columns` it does not hold
        weigh 0 here."""
        positive = jnp.exp(jnp.sum(embedding * positive_rows, axis=-1) / temperature)
        kept = jnp.exp(jnp.einsum("bd,nd->bn", embedding, self.bank) / temperature)
        previous = jnp.exp(jnp.einsum("bd,nd->bn", embedding, self.rows) / temperature)
        if shard is None:
            previous_weights = counts[:, self.columns]
        else:
            position, owned = shard.local(self.columns)
            previous_weights = jnp.where(owned, counts[:, jnp.where(owned, position, 0)], 0.0)
        return positive, ((kept, jnp.where(self.updated, 0.0, counts)), (previous, previous_weights))


def bank_specs(tree):
    """`shard_map` specs of `tree` in the sharded layout: a `ScoredBank`'s bank and updated mask by rows, the
    rest whole."""
    def spec(leaf):
        return ScoredBank(ROWS, ROWS, WHOLE, WHOLE) if isinstance(leaf, ScoredBank) else WHOLE

    return jax.tree.map(spec, tree, is_leaf=lambda leaf: isinstance(leaf, ScoredBank))


def _loss_pair_and_grads(side_sum, chunks: int, num_negatives: int, blocks: BankBlocks | None, embeddings, rows,
                         constants, tables, negatives: Negatives):
    """Both sides' loss, -Σ_rows side_sum / B, and its gradient with respect to each side's embedding, chunk by
    chunk: the (rows, N) counts, scores and their gradients exist for one chunk of rows at a time. `blocks`: the
    banks are row-sharded; each device computes its block's part of the sums and gradients, which are then
    summed over the devices (side_sum counts the positives on one device)."""
    batch = embeddings[0].shape[0]
    shard = None if blocks is None else blocks.shard

    def side_sums(embeddings, rows, constants, tables, negatives):
        """(sums, gradients) of both sides over the rows (and the columns) given."""
        def chunk_sums(chunk_rows, chunk_negatives):
            embed_student, embed_teacher, rows_student, rows_teacher = chunk_rows
            counts = chunk_negatives.counts(tables, num_negatives, shard)
            sum_student, grad_student = jax.value_and_grad(side_sum)(embed_student, rows_student, constants[0],
                                                                     counts)
            sum_teacher, grad_teacher = jax.value_and_grad(side_sum)(embed_teacher, rows_teacher, constants[1],
                                                                     counts)
            return sum_student, sum_teacher, grad_student, grad_teacher

        sums_student, sums_teacher, grads_student, grads_teacher = map_chunks(
            chunk_sums, chunks, (*embeddings, *rows), negatives)
        return ((jnp.sum(sums_student), jnp.sum(sums_teacher)),
                (from_chunks(grads_student), from_chunks(grads_teacher)))

    if blocks is None:
        sums, grads = side_sums(embeddings, rows, constants, tables, negatives)
    else:
        sums, grads = blocks.run(lambda *args: shard.sum(side_sums(*args)),
                                 (WHOLE, WHOLE, bank_specs(constants), table_specs(tables), WHOLE), WHOLE)(
            embeddings, rows, constants, tables, negatives)
    return (-sums[0] / batch, -sums[1] / batch), (-grads[0] / batch, -grads[1] / batch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def chunked_loss_pair(side_sum, chunks: int, num_negatives: int, blocks: BankBlocks | None, embeddings, rows,
                      constants, tables, negatives: Negatives):
    """(student side's loss, teacher side's loss), each -Σ_rows side_sum(embedding, rows, constants, counts) / B
    over the batch's rows in `chunks` chunks, the negatives' counts drawn per chunk (`blocks`: over the sharded
    banks' blocks). Differentiable in the two `embeddings` only (`rows`, `constants`, `tables` and the negatives
    are constants); their gradients are computed along with the losses, so that nothing (B, N) is kept for the
    backward pass."""
    return _loss_pair_and_grads(side_sum, chunks, num_negatives, blocks, embeddings, rows, constants, tables,
                                negatives)[0]


def _chunked_loss_pair_forward(side_sum, chunks, num_negatives, blocks, *args):
    return _loss_pair_and_grads(side_sum, chunks, num_negatives, blocks, *args)


def _chunked_loss_pair_backward(side_sum, chunks, num_negatives, blocks, grads, cotangents):
    """The embeddings' gradients, saved by the forward pass, times the losses' cotangents; None: zero."""
    return (cotangents[0] * grads[0], cotangents[1] * grads[1]), None, None, None, None


chunked_loss_pair.defvjp(_chunked_loss_pair_forward, _chunked_loss_pair_backward)
