"""Data: offline TFDS builders, grain / tf.data reading, per-process rows of global batches."""

from jaxdistill.data.pipeline import make_eval_iterator, make_train_iterator
from jaxdistill.data.source import DatasetInfo, default_data_dir, prepare

__all__ = [
    "DatasetInfo",
    "default_data_dir",
    "make_eval_iterator",
    "make_train_iterator",
    "prepare",
]
