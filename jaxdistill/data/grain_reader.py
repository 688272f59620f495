"""The `grain` reading path: random access to array_record through `tfds` data sources.

Reads image and token datasets. Each process reads only its own rows of each global batch.
Batches are read on grain's threads and prefetched in order; no TensorFlow is involved.
"""

import sys
from collections.abc import Iterator

import grain
import numpy as np

from jaxdistill.data import sampling
from jaxdistill.data.source import DatasetInfo, tfds_builder

KINDS = ("image", "tokens")  # the DatasetInfo kinds this reader reads
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)  # one element = one batch


def _data_source(info: DatasetInfo, split: str):
    builder = tfds_builder(info.tfds_name, info.data_dir)
    try:
        return builder.as_data_source(split)
    except NotImplementedError as e:
        raise ValueError(
            f"config.data.reader='grain': {info.name} in {info.data_dir} has no random-access "
            "files; prepare it with `--file_format=array_record` or use config.data.reader='tf'"
        ) from e


def _read(source, info: DatasetInfo, indices: np.ndarray, rows: int, with_mask: bool) -> dict:
    """Reads examples `indices` into a host batch padded to `rows` rows."""
    examples = source.__getitems__(indices.tolist())
    if info.kind == "tokens":
        return sampling.token_batch(examples, indices, rows, info.seq_len, with_mask=with_mask,
                                    extra_fields=info.metadata.get("extra_fields"))
    images = np.array([e["image"] for e in examples], np.uint8).reshape(-1, *info.image_shape)
    labels = [e["label"] for e in examples]
    return sampling.make_batch(images, labels, indices, rows, with_mask=with_mask)


def _iterate(batch_numbers: grain.MapDataset, load, add_fields) -> Iterator[dict]:
    if add_fields is not None:  # on grain's threads, prefetched with the batch
        batch_numbers = batch_numbers.map(load).map(add_fields)
    else:
        batch_numbers = batch_numbers.map(load)
    return iter(batch_numbers.to_iter_dataset(READ_OPTIONS))


def train_batches(info, split, global_batch_size, seed, position, process_index, process_count,
                  *, add_fields=None):
    """This process's rows of global train batches `position`, `position + 1`, ... (endless);
    `add_fields(host_batch) -> host_batch` (optional) adds fields to each."""
    source = _data_source(info, split)
    num_examples = info.splits[split]

    def load(n: int) -> dict:
        indices = sampling.train_batch_indices(num_examples, global_batch_size, seed, n)
        indices = sampling.process_rows(indices, process_index, process_count)
        return _read(source, info, indices, len(indices), with_mask=False)

    return _iterate(grain.MapDataset.range(position, sys.maxsize), load, add_fields)


def eval_batches(info, split, global_batch_size, process_index, process_count, *,
                 add_fields=None):
    """This process's rows of the in-order, padded global eval batches (`add_fields` as
    for `train_batches`)."""
    source = _data_source(info, split)
    num_examples = info.splits[split]

    def load(n: int) -> dict:
        indices = sampling.eval_batch_positions(global_batch_size, n)
        indices = sampling.process_rows(indices, process_index, process_count)
        real = indices[indices < num_examples]
        return _read(source, info, real, len(indices), with_mask=True)

    num_batches = sampling.num_eval_batches(num_examples, global_batch_size)
    return _iterate(grain.MapDataset.range(num_batches), load, add_fields)
