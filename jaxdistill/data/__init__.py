"""Data: offline TFDS builders (images and tokenised text), grain / tf.data reading,
per-process rows of global batches."""

from jaxdistill.data.pipeline import make_eval_iterator, make_train_iterator
from jaxdistill.data.source import (
    DatasetInfo,
    default_data_dir,
    prepare,
    prepare_from_config,
    split_labels,
)
from jaxdistill.data.tokenizer import decode, load_tokenizer

__all__ = [
    "DatasetInfo",
    "decode",
    "default_data_dir",
    "load_tokenizer",
    "make_eval_iterator",
    "make_train_iterator",
    "prepare",
    "prepare_from_config",
    "split_labels",
]
