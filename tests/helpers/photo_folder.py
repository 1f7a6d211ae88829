"""A 3-class image folder cut from real photographs (scikit-learn's two sample images), for the training tests
on the streaming path (tests/test_train_streaming.py, tests/test_train_torchvision_teacher.py)."""

import numpy as np
from PIL import Image

# (class, photograph, region (left, top, right, bottom)) of scikit-learn's two sample photographs
CLASSES = [("flower", 1, (150, 50, 550, 427)), ("sky", 0, (0, 0, 640, 120)), ("temple", 0, (150, 150, 500, 427))]
TRAIN_PER_CLASS, VAL_PER_CLASS = 16, 5  # 48 training images: 6 steps of 8; 15 validation: 2 batches of 8, padded


def write_photo_folder(root):
    """ROOT/{train,val}/<class>/<image>: random crops of three regions of the sample photographs (a flower, the
    sky, the temple), rescaled to 32-64 px and written as JPEG and PNG. Returns `root`."""
    from sklearn.datasets import load_sample_images

    photographs = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name, photo, (left, top, right, bottom) in CLASSES:
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                width, height = rng.integers(60, 120, size=2)
                x, y = rng.integers(left, right - width), rng.integers(top, bottom - height)
                crop = photographs[photo].crop((x, y, x + width, y + height))
                crop = crop.resize(tuple(int(s) for s in rng.integers(32, 65, size=2)), Image.Resampling.BICUBIC)
                crop.save(root / split / name / (f"{k}.png" if k % 2 else f"{k}.jpg"))
    return root
