"""The streaming loop's prefetch to the device (`jaxkd.engine.loop.StreamingTrainLoop`): each step gets the
loader's batches in order while the next ones wait on the devices, the position a checkpoint saves is the next
step's (not the loader's, which is ahead), and nothing is read past the run's last step. The end-to-end run with
SIGTERM and resume is tests/test_train_streaming.py's."""

import collections
import importlib.util
import types
from pathlib import Path

import jax
import numpy as np

from jaxkd.data.streaming import ImageFolderSource, ImageTransforms, make_train_iterator
from jaxkd.engine.loop import StreamingTrainLoop
from jaxkd.engine.mesh import batch_sharded, data_mesh

REPO = Path(__file__).resolve().parents[1]
BATCH, STEPS = 2, 4


def test_each_step_gets_the_loaders_batches_in_order_with_two_waiting_on_the_devices(tmp_path):
    spec = importlib.util.spec_from_file_location("make_photos", REPO / "benchmarks" / "make_photos.py")
    make_photos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_photos)
    source = ImageFolderSource(make_photos.write_photos(tmp_path, train=BATCH * STEPS, val=0), "train")
    transforms = ImageTransforms(train_size=16)

    def loader():
        return make_train_iterator(source, transforms, seed=3, batch=BATCH, num_epochs=1, threads=1)

    expected = [batch["image"] for batch in loader()]  # the loader's batches, read alone
    seen = []

    def program(state, sums, images, labels, index):  # a step: records its batch, counts the steps
        seen.append(np.asarray(images))
        return state + 1, sums

    loop = types.SimpleNamespace(batches=loader(), config=types.SimpleNamespace(batch_size=BATCH), sums=None,
                                 inputs=(), ready=collections.deque(), best={"best_top1": 0.0},
                                 batch_sharding=batch_sharded(data_mesh(tuple(jax.devices()[:1]))),
                                 DEVICE_PREFETCH=StreamingTrainLoop.DEVICE_PREFETCH)
    loop.prefetch = lambda count: StreamingTrainLoop.prefetch(loop, count)
    state = 0
    for step in range(STEPS):
        state, _ = StreamingTrainLoop.call(loop, program, state, None)
        ahead = min(StreamingTrainLoop.DEVICE_PREFETCH, STEPS - state)
        assert len(loop.ready) == ahead and loop.batches.step == state + ahead  # read ahead, up to the end
        assert StreamingTrainLoop.progress.fget(loop)["loader"]["step"] == state  # the next step's position
    assert state == STEPS and len(seen) == STEPS
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
