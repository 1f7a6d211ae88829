"""Writes an ImageFolder tree of real photographs at ImageNet-like sizes, the input bench's files.

    python benchmarks/make_photos.py OUT [--train 1600] [--val 64] [--seed 0]

OUT/{train,val}/<class>/<k>.jpg: crops of scikit-learn's two sample photographs (`load_sample_images`: a Chinese
temple and a flower, 640x427 each), one class per region of a photograph, each crop rescaled to 360-460 x 300-400
px (ImageNet's training images are ~400x350 on average) and saved as JPEG at quality 90 (ImageNet's files are
JPEGs of about that quality). The files are photographs, not noise, so decoding and resampling cost what they cost
on real data. `python -m jaxkd.bench --input OUT` times the streaming loader on them (benchmarks/README.md).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# (class, photograph, region (left, top, right, bottom)) of the two 640x427 sample photographs
REGIONS = [("temple", 0, (100, 80, 640, 427)), ("sky", 0, (0, 0, 640, 260)), ("flower", 1, (120, 0, 640, 427)),
           ("leaves", 1, (0, 0, 360, 427))]
WIDTHS, HEIGHTS = (360, 461), (300, 401)  # the written sizes: ImageNet-like
QUALITY = 90


def write_photos(out, train: int = 1600, val: int = 64, seed: int = 0) -> Path:
    """Writes `train` and `val` JPEGs (spread evenly over the classes) under `out`; returns `out`."""
    from sklearn.datasets import load_sample_images

    photographs = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = Path(out)
    for split, count in (("train", train), ("val", val)):
        for k in range(count):
            name, photo, (left, top, right, bottom) = REGIONS[k % len(REGIONS)]
            width = int(rng.integers(min(200, right - left), right - left + 1))
            height = int(rng.integers(min(160, bottom - top), bottom - top + 1))
            x, y = int(rng.integers(left, right - width + 1)), int(rng.integers(top, bottom - height + 1))
            crop = photographs[photo].crop((x, y, x + width, y + height))
            size = (int(rng.integers(*WIDTHS)), int(rng.integers(*HEIGHTS)))
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            crop.resize(size, Image.Resampling.BICUBIC).save(folder / f"{k:05d}.jpg", quality=QUALITY)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the folder to write (ROOT of ROOT/train/<class>/<image>)")
    parser.add_argument("--train", type=int, default=1600, help="training images (the bench at batch 32 with 16 "
                        "workers reads 1600 in an epoch)")
    parser.add_argument("--val", type=int, default=64, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write_photos(args.out, args.train, args.val, args.seed)}")


if __name__ == "__main__":
    main()
