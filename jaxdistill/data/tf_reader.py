"""The `tf` reading path: TFDS tfrecord files through tf.data. TensorFlow is imported here only.
It reads image datasets only (token datasets: the `grain` reader).

Train: process p of P reads its even share of the split, examples [p*N//P, (p+1)*N//P), in file
order, shuffled each epoch through a buffer of `SHUFFLE_BUFFER` examples seeded with
`sampling.epoch_seed(seed, epoch)`; every epoch yields `sampling.batches_per_epoch(N, B)`
batches of B/P rows (remainder dropped). So, unlike grain, the batches depend on the number of
processes and differ from grain's; with one process and N <= SHUFFLE_BUFFER each epoch is a
uniform random permutation of the split. Resuming at `position` re-reads (without yielding) the
batches before it within its epoch.

Eval: the same in-order, padded global batches as grain; every process reads the whole split.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data import sampling
from jaxdistill.data.builders import OFFLINE_BUILDERS, add_tfrecord_copy, tfrecord_files
from jaxdistill.data.source import DatasetInfo, tfds_builder

KINDS = ("image",)  # the DatasetInfo kinds this reader reads
SHUFFLE_BUFFER = 50_000
_TFRECORD = tfds.core.FileFormat.TFRECORD


@functools.cache
def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ValueError(
            "config.data.reader='tf' needs TensorFlow, which is not importable: install "
            "tensorflow-cpu (the `tf` extra) or use config.data.reader='grain'"
        ) from e
    try:
        tf.config.set_visible_devices([], "GPU")  # accelerators belong to JAX
    except RuntimeError:  # TensorFlow was initialised elsewhere already
        pass
    return tf


def _numpy(ds):
    return ds.prefetch(_tf().data.AUTOTUNE).as_numpy_iterator()


def _tfrecord_builder(info: DatasetInfo) -> tfds.core.DatasetBuilder:
    """A builder reading tfrecord; an offline dataset gets its tfrecord copy on first use."""
    _tf()
    builder = tfds_builder(info.name, info.data_dir)
    if not all(twin.exists() for _, twin in tfrecord_files(builder)):
        if info.name not in OFFLINE_BUILDERS:
            raise ValueError(
                f"config.data.reader='tf': {info.name} in {info.data_dir} has no tfrecord "
                "files; use config.data.reader='grain' or prepare it with plain `tfds build`"
            )
        add_tfrecord_copy(builder)
    # As `as_data_source` does for array_record: point the split file names at the format.
    # (`ReadConfig(file_format=...)` alone keeps the names of the main format.)
    builder.info.set_file_format(_TFRECORD, override=True, override_if_initialized=True)
    return builder


def _examples(builder, split: str, start: int):
    """tf.data of (example index, (image, label)) in file order; `split` starts at `start`."""
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda ex: (ex["image"], ex["label"])).enumerate(start)


def _finish(add_fields):
    return (lambda batch: batch) if add_fields is None else add_fields


def train_batches(info, split, global_batch_size, seed, position, process_index, process_count,
                  *, add_fields=None):
    """This process's train batches `position`, `position + 1`, ... (endless);
    `add_fields(host_batch) -> host_batch` (optional) adds fields to each."""
    builder = _tfrecord_builder(info)  # errors surface here, not at the first batch
    num_examples = info.splits[split]
    share, rows = num_examples // process_count, global_batch_size // process_count
    start = process_index * share
    per_epoch = sampling.batches_per_epoch(num_examples, global_batch_size)
    finish = _finish(add_fields)

    def batches():
        epoch, skip = divmod(position, per_epoch)
        while True:
            ds = _examples(builder, f"{split}[{start}:{start + share}]", start)
            ds = ds.shuffle(min(SHUFFLE_BUFFER, share), seed=sampling.epoch_seed(seed, epoch))
            ds = ds.batch(rows, drop_remainder=True).take(per_epoch).skip(skip)
            for index, (image, label) in _numpy(ds):
                yield finish(sampling.make_batch(image, label, index, rows))
            epoch, skip = epoch + 1, 0

    return batches()


def eval_batches(info, split, global_batch_size, process_index, process_count, *,
                 add_fields=None):
    """This process's rows of the in-order, padded global eval batches (`add_fields` as
    for `train_batches`)."""
    ds = _examples(_tfrecord_builder(info), split, 0).batch(global_batch_size)
    mine = sampling.process_rows(np.arange(global_batch_size), process_index, process_count)
    finish = _finish(add_fields)

    def batches():
        for index, (image, label) in _numpy(ds):
            sel = mine[mine < len(index)]
            batch = sampling.make_batch(image[sel], label[sel], index[sel], len(mine),
                                        with_mask=True)
            yield finish(batch)

    return batches()
