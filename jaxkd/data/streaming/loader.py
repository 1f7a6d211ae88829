"""Batches for the training loop from a streaming source, on Grain: an exact function of (seed, step), sharded by
process, with worker processes.

Each global batch of `batch` examples is cut into `process_count` equal slices; process `p` reads slice `p` only
(its `local_batch = batch / process_count` examples), so the global batch, and every step's data, is the same for
any number of processes (`jax.make_array_from_process_local_data` assembles it). Epoch `e` visits the training
examples in the permutation `epoch_permutation(seed, e, N)`; global step `s` is batch `s % steps_per_epoch` of
epoch `s // steps_per_epoch`, and example `i`'s random crop and flip come from `example_rng(seed, e, i)`. Nothing
depends on which thread or worker process made an example, so a stopped run that restarts at step `s`
(`start_step`, or `TrainIterator.restore(state)`) gets the same batches as a run that never stopped, with any number
of workers or processes.

An epoch holds `N // batch` full batches (`drop_last=True`, the default: fixed shapes, as torchvision's
`DataLoader(drop_last=True)`; each epoch leaves out a different remainder of fewer than `batch` examples) or
`ceil(N / batch)` with the last padded and masked (`drop_last=False`: every example exactly once per epoch, the
step must weight its loss by `mask`). Evaluation (`make_eval_batches`) always pads: the validation split in its
order, each image in exactly one batch with `mask` True, padding with `mask` False and `index` -1.

Every batch is a dict of numpy arrays: `image` uint8 (local_batch, S, S, 3), `label` int32, `index` int32 (the
example's position in its split: CRD's memory bank key), `mask` bool. The images are not normalized:
`ImageTransforms.normalize` does that in the step (bit-identical to torchvision's ToTensor + Normalize).

Grain pipeline: `MapDataset.source(examples)` (one random-access element per local example of every step) ->
`.batch(local_batch)` -> `[start_step:]` -> `.to_iter_dataset(ReadOptions(num_threads=threads))` (decoding in
threads) -> `.mp_prefetch(MultiprocessingOptions(num_workers=workers))` (in worker processes, each handed whole
batches: the batches do not depend on the worker count).
"""

from __future__ import annotations

import dataclasses
import threading

import grain
import numpy as np
from absl import flags

from jaxkd.data.streaming.transforms import ImageTransforms
from jaxkd.errors import UserError

_PERMUTATION_STREAM, _EXAMPLE_STREAM = 0, 1  # the first word of the seed: keeps the two streams apart
_WORD = 2 ** 32  # each seed word must be one uint32 so that no two tuples share a seed
UNBOUNDED_EPOCHS = 1_000_000  # `num_epochs=None`: a dataset this long, never reached


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the `num_examples` training examples (int64 (N,))."""
    return np.random.default_rng([_PERMUTATION_STREAM, seed, epoch]).permutation(num_examples)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of example `index`'s random transform in epoch `epoch` of the run with `seed`."""
    return np.random.default_rng([_EXAMPLE_STREAM, seed, epoch, index])


def _check_layout(batch: int, process_index: int, process_count: int, seed: int = 0) -> int:
    """`batch // process_count`, after one UserError for a layout that cannot be cut evenly."""
    if not (isinstance(batch, int) and batch >= 1 and isinstance(process_count, int) and process_count >= 1):
        raise UserError(f"batch size and process count must be integers >= 1, got {batch} and {process_count}")
    if batch % process_count:
        raise UserError(f"batch size {batch} must be a multiple of the process count {process_count}: each process "
                        f"reads an equal slice of every global batch")
    if not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} outside 0..{process_count - 1}")
    if not (isinstance(seed, int) and 0 <= seed < _WORD):
        raise UserError(f"seed must be an integer in 0..{_WORD - 1}, got {seed!r}")
    return batch // process_count


class _Examples:
    """Grain's random-access source of one process's examples: element `k` is example `k % local_batch` of this
    process's slice of global step `k // local_batch` (transformed; padding where the step runs past the data)."""

    def __init__(self, source, transforms: ImageTransforms, *, train: bool, seed: int, batch: int,
                 process_index: int, process_count: int, num_steps: int, steps_per_epoch: int):
        self.source, self.transforms, self.train, self.seed = source, transforms, train, seed
        self.batch, self.process_index = batch, process_index
        self.local_batch = batch // process_count
        self.num_steps, self.steps_per_epoch = num_steps, steps_per_epoch
        self.num_examples = len(source)
        self._lock, self._permutations = threading.Lock(), {}

    def __getstate__(self):
        return {**self.__dict__, "_lock": None, "_permutations": {}}  # each process computes its own

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_steps * self.local_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                self._permutations = {epoch: epoch_permutation(self.seed, epoch, self.num_examples)}  # the latest
            return self._permutations[epoch]

    def __getitem__(self, element: int) -> dict:
        step, slot = divmod(int(element), self.local_batch)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        position = step_in_epoch * self.batch + self.process_index * self.local_batch + slot
        if position >= self.num_examples:
            size = self.transforms.train_size if self.train else self.transforms.eval_crop
            return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0), "index": np.int32(-1),
                    "mask": np.bool_(False)}
        index = int(self._permutation(epoch)[position]) if self.train else position
        image, label = self.source.example(index)
        if self.train:
            pixels = self.transforms.train(image, example_rng(self.seed, epoch, index))
        else:
            pixels = self.transforms.eval(image)
        return {"image": pixels, "label": np.int32(label), "index": np.int32(index), "mask": np.bool_(True)}


def _iter_dataset(examples: _Examples, start_step: int, workers: int, threads: int):
    dataset = grain.MapDataset.source(examples).batch(examples.local_batch, drop_remainder=True)[start_step:]
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 1)))
    if workers:
        # Grain 0.2.18 reads one of its absl flags when it starts workers, an error where no absl app parsed the
        # command line (a library call, pytest): their defaults are taken as parsed, as absl's app.run would.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return dataset


@dataclasses.dataclass(frozen=True)
class _RunKey:
    """What a saved position is only valid for: the same data, seed, global batch and epoch length."""

    num_examples: int
    seed: int
    batch: int
    drop_last: bool


class TrainIterator:
    """The training batches of one process from step `step` on; `get_state()`/`restore(state)` save and resume the
    position (a small JSON-able dict: the next global step and what it is valid for).

    The batches being a function of the step, the step is the whole position. Grain's own iterator state would also
    do, but it records each worker's place, so it only restores with the same number of workers, and it differs
    per process; the step restores with any number of either."""

    def __init__(self, examples: _Examples, key: _RunKey, start_step: int, workers: int, threads: int):
        self._examples, self._key, self._workers, self._threads = examples, key, workers, threads
        self.steps_per_epoch = examples.steps_per_epoch
        self.num_steps = examples.num_steps
        self._start(start_step)

    def _start(self, step: int) -> None:
        if not 0 <= step <= self.num_steps:
            raise UserError(f"start step {step} outside 0..{self.num_steps}")
        self.step = step
        self._iterator = None  # made by the first `next`: an iterator never read starts no thread or process

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(_iter_dataset(self._examples, self.step, self._workers, self._threads))
        try:
            batch = next(self._iterator)
        except BaseException:  # the end, or an error (a file that cannot be read): stop the threads and workers
            self.close()
            raise
        self.step += 1
        return batch

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def get_state(self) -> dict:
        """The position: the next global step, with the run's data size, seed, batch and drop_last."""
        return {"step": self.step, **dataclasses.asdict(self._key)}

    def restore(self, state: dict) -> None:
        """Continues at `state["step"]` (from `get_state`); a state of another data size, seed, batch or drop_last
        is one UserError (it would name other batches)."""
        saved = _RunKey(**{field.name: state.get(field.name) for field in dataclasses.fields(_RunKey)})
        if saved != self._key:
            raise UserError(f"the saved data position was made for {saved}, this run has {self._key}: they name "
                            f"different batches")
        self.close()
        self._start(int(state["step"]))

    def close(self) -> None:
        """Stops the reading threads and worker processes now (at the end of the batches this happens by itself;
        Grain's own clean-up at garbage collection comes at an unpredictable moment)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None


def make_train_iterator(source, transforms: ImageTransforms, seed: int, batch: int, process_index: int = 0,
                        process_count: int = 1, start_step: int = 0, *, num_epochs: int | None = None,
                        drop_last: bool = True, workers: int = 0, threads: int = 8) -> TrainIterator:
    """This process's training batches (module docstring) from global step `start_step`, `num_epochs` epochs
    (None: without end). `workers`: decoding processes (0: in this process, `threads` threads)."""
    _check_layout(batch, process_index, process_count, seed)
    num_examples = len(source)
    steps_per_epoch = num_examples // batch if drop_last else -(-num_examples // batch)
    if steps_per_epoch == 0:
        raise UserError(f"{num_examples} training examples make no full batch of {batch}")
    epochs = UNBOUNDED_EPOCHS if num_epochs is None else num_epochs
    examples = _Examples(source, transforms, train=True, seed=seed, batch=batch, process_index=process_index,
                         process_count=process_count, num_steps=epochs * steps_per_epoch,
                         steps_per_epoch=steps_per_epoch)
    return TrainIterator(examples, _RunKey(num_examples, seed, batch, bool(drop_last)), start_step, workers, threads)


class EvalBatches:
    """This process's evaluation batches over a whole split (iterable more than once); `len()`: the number of
    steps, the same on every process."""

    def __init__(self, examples: _Examples, workers: int, threads: int):
        self._examples, self._workers, self._threads = examples, workers, threads

    def __len__(self) -> int:
        return self._examples.num_steps

    def __iter__(self):
        iterator = iter(_iter_dataset(self._examples, 0, self._workers, self._threads))
        try:
            yield from iterator
        finally:  # at the end, or when the loop over it stops early
            iterator.close()


def make_eval_batches(source, transforms: ImageTransforms, batch: int, process_index: int = 0,
                      process_count: int = 1, *, workers: int = 0, threads: int = 8) -> EvalBatches:
    """The split in `ceil(N / batch)` global batches, in its order, the last padded (`mask` False, `index` -1);
    this process's slice of each."""
    _check_layout(batch, process_index, process_count)
    num_steps = -(-len(source) // batch)
    examples = _Examples(source, transforms, train=False, seed=0, batch=batch, process_index=process_index,
                         process_count=process_count, num_steps=num_steps, steps_per_epoch=max(num_steps, 1))
    return EvalBatches(examples, workers, threads)
