"""An image folder rewritten as a TFDS image-classification dataset, for the tests that read it both ways
(tests/test_data_streaming.py, tests/test_train_streaming.py)."""

from pathlib import Path

from jaxkd.data.streaming import ImageFolderSource


def write_tfds_copy(data_dir, photos, splits, broken=None):
    """The folder's images as a TFDS image-classification dataset "photo_classes" in TFDS's on-disk format, without
    TensorFlow: split `tfds_split` holds folder split `splits[tfds_split]`, the features serialize each example (the
    file's encoded bytes, its label; record `broken[tfds_split]`, if given, holds bytes that are no image), TFDS's
    ArrayRecord writer stores them under TFDS's file names, and tfds.folder_dataset.write_metadata adds
    dataset_info.json."""
    import tensorflow_datasets as tfds  # heavy: imported by the two tests that write a copy
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
