"""Datasets on disk: where they live, building the offline ones, describing any of them."""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data.builders import OFFLINE_BUILDERS, build_offline


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A prepared dataset: what the trainer needs to know before reading it."""

    name: str
    data_dir: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    splits: dict[str, int]  # examples per split


def default_data_dir() -> str:
    """$JAXDISTILL_DATA_DIR if set, else ~/.cache/jaxdistill/tensorflow_datasets."""
    return os.environ.get("JAXDISTILL_DATA_DIR") or os.path.expanduser(
        "~/.cache/jaxdistill/tensorflow_datasets"
    )


def _not_prepared(name: str, data_dir: str, why: str) -> ValueError:
    return ValueError(
        f"config.data.name={name!r}: {why} in data_dir={data_dir!r}; nothing is ever downloaded. "
        f"Prepare it where there is network with `tfds build {name} --data_dir={data_dir} "
        "--file_format=array_record` (for config.data.reader='grain'; plain `tfds build` writes "
        f"tfrecord, for reader 'tf'), or use an offline dataset: {', '.join(OFFLINE_BUILDERS)}."
    )


def tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a dataset already prepared in `data_dir` (never downloads)."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as e:  # unknown name or version
        raise _not_prepared(name, data_dir, "no such TFDS dataset") from e
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, "dataset is not prepared")
    return builder


def prepare(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Builds mnist5k/digits into `data_dir` if missing; any other dataset must be prepared."""
    data_dir = os.path.expanduser(os.fspath(data_dir or default_data_dir()))
    if name in OFFLINE_BUILDERS:
        builder = build_offline(name, data_dir)
    else:
        builder = tfds_builder(name, data_dir)
    features = builder.info.features
    if not {"image", "label"} <= set(features.keys()):
        raise ValueError(f"config.data.name={name!r}: needs 'image' and 'label' features")
    image, label = features["image"], features["label"]
    if None in image.shape or len(image.shape) != 3 or image.np_dtype != np.uint8:
        raise ValueError(
            f"config.data.name={name!r}: images must be uint8 of one fixed (H, W, C) shape, "
            f"got {image.np_dtype.__name__} {image.shape} (no resizing stage exists)"
        )
    return DatasetInfo(
        name=name,
        data_dir=data_dir,
        num_classes=label.num_classes,
        image_shape=tuple(image.shape),
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
    )
