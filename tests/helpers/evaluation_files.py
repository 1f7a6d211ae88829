"""Test data for the evaluation tests (test_evaluate, test_robustness, test_scale_out): random images a
randomized model tells apart, CIFAR-100's `test` file and CIFAR-100-C's folder written in their release
layouts, and the counts a reference model's logits give."""

import pickle
from pathlib import Path

import numpy as np
import torch

from tests.helpers.torch_references import randomized_torch_model, torch_logits

BATCH = 64  # one batch size for all of them: the eval step compiles once per (model, batch size)
BLOCK = 7  # CIFAR-100-C images per severity here (10,000 in the release); not a multiple of BATCH
WRITTEN_CORRUPTIONS = ("brightness", "fog", "zoom_blur")


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
    """An evaluation result whose counts equal the reference logits' up to near ties, and whose top-1 follows."""
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
