"""A 3-class image folder cut from real photographs (scikit-learn's two sample images), for the training tests
on the streaming path (tests/test_train_streaming.py, tests/test_train_torchvision_teacher.py), and a TFDS-format
copy of such a folder (`write_tfds_copy`)."""

from pathlib import Path

import numpy as np
from PIL import Image

from jaxkd.data.streaming import ImageFolderSource

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


def write_tfds_copy(data_dir, photos, splits, broken=None):
    """The folder's images as a TFDS image-classification dataset "photo_classes" in TFDS's on-disk format, without
    TensorFlow: split `tfds_split` holds folder split `splits[tfds_split]`, the features serialize each example (the
    file's encoded bytes, its label; record `broken[tfds_split]`, if given, holds bytes that are no image), TFDS's
    ArrayRecord writer stores them under TFDS's file names, and tfds.folder_dataset.write_metadata adds
    dataset_info.json."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    train = ImageFolderSource(photos, "train")
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"),
                                           "label": tfds.features.ClassLabel(names=train.classes)})
    version_dir = data_dir / "photo_classes" / "1.0.0"
    version_dir.mkdir(parents=True)
    split_infos = []
    for tfds_split, folder_split in splits.items():
        source = ImageFolderSource(photos, folder_split)
        encoded = [Path(path).read_bytes() for path in source.paths]
        if tfds_split in (broken or {}):
            encoded[broken[tfds_split]] = b"no image in this record"
        records = [(None, features.serialize_example({"image": image, "label": int(label)}))
                   for image, label in zip(encoded, source.labels)]
        file_adapters.ArrayRecordFileAdapter.write_examples(
            version_dir / f"photo_classes-{tfds_split}.array_record-00000-of-00001", iter(records))
        split_infos.append(tfds.core.SplitInfo(name=tfds_split, shard_lengths=[len(records)], num_bytes=0))
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, split_infos=split_infos,
                                       check_data=False)
