"""Train and eval iterators that yield global, sharded batches.

A batch is a dict of global `jax.Array`s placed with the given sharding, assembled from each
process's rows with `jax.make_array_from_process_local_data`. Image dataset: image float32
[B, H, W, C] in [0, 1], label int32 [B]. Token dataset (`info.kind == "tokens"`, grain only):
inputs, targets, segment_ids, positions int32 [B, L] and weights float32 [B, L] (see
`packing`). Both: index int32 [B] (example index within the split, -1 on padding) and, for
eval, mask float32 [B] (1 real, 0 padding); padding rows are 0 in every other field.
Batch composition is described in `sampling` (grain) and `tf_reader` (tf).

`extra_fields` (optional, both iterators): a function of one process's LOCAL host batch (numpy,
including `index`) that returns more numpy fields for those rows, e.g. stored teacher outputs
looked up by example index. Each must have the batch's rows as its leading axis; it becomes a
global field with the batch's sharding. It must handle padding rows (index -1). With grain it
runs on grain's reader threads (so it is prefetched with the batch and must be thread-safe).
"""

from collections.abc import Callable, Iterator

import jax
import numpy as np

from jaxdistill.data import grain_reader, sampling, tf_reader
from jaxdistill.data.source import DatasetInfo

READERS = {"grain": grain_reader, "tf": tf_reader}

ExtraFields = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _adder(extra_fields: ExtraFields | None):
    """The readers' `add_fields`: host batch -> the batch with `extra_fields`' fields added."""
    if extra_fields is None:
        return None

    def add_fields(batch: dict) -> dict:
        extra = extra_fields(dict(batch))
        clash = sorted(set(extra) & set(batch))
        if clash:
            raise ValueError(f"extra_fields returned {clash}, which the batch already has")
        rows = len(batch["index"])
        out = dict(batch)
        for name, value in extra.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] != rows:
                raise ValueError(f"extra_fields: field '{name}' has shape {value.shape}; its "
                                 f"leading axis must be the host batch's {rows} rows")
            out[name] = value
        return out

    return add_fields


class GlobalBatchIterator:
    """Turns this process's host batches into global arrays; `position` counts batches yielded."""

    def __init__(self, local_batches: Iterator[dict], sharding, global_batch_size, position=0):
        self._local_batches = local_batches
        self._sharding = sharding
        self._global_batch_size = global_batch_size
        self.position = position

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self._local_batches)
        self.position += 1
        return {
            k: jax.make_array_from_process_local_data(
                self._sharding, v, (self._global_batch_size, *v.shape[1:])
            )
            for k, v in local.items()
        }


class EvalBatches:
    """One in-order pass over a split per `iter()`; `len()` is the number of global batches."""

    def __init__(self, info: DatasetInfo, split, reader, global_batch_size, sharding,
                 extra_fields: ExtraFields | None = None):
        self._args = (info, split, global_batch_size, jax.process_index(), jax.process_count())
        self._reader, self._sharding = READERS[reader], sharding
        self._add_fields = _adder(extra_fields)
        self._len = sampling.num_eval_batches(info.splits[split], global_batch_size)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> GlobalBatchIterator:
        local = self._reader.eval_batches(*self._args, add_fields=self._add_fields)
        return GlobalBatchIterator(local, self._sharding, self._args[2])


def _validate(info: DatasetInfo, split, split_field, reader, global_batch_size, size_field):
    if split not in info.splits:
        raise ValueError(
            f"{split_field}={split!r} is not a split of {info.name}: {sorted(info.splits)}"
        )
    if reader not in READERS:
        raise ValueError(f"config.data.reader={reader!r}: expected one of {sorted(READERS)}")
    if info.kind not in READERS[reader].KINDS:
        able = sorted(r for r, module in READERS.items() if info.kind in module.KINDS)
        raise ValueError(f"config.data.reader={reader!r} cannot read {info.kind} datasets such "
                         f"as {info.name}: use config.data.reader={able[0]!r}")
    processes = jax.process_count()
    if global_batch_size <= 0 or global_batch_size % processes:
        raise ValueError(
            f"{size_field}={global_batch_size} must be a positive multiple of "
            f"jax.process_count()={processes}"
        )


def make_train_iterator(
    info: DatasetInfo,
    *,
    split: str,
    reader: str,
    global_batch_size: int,
    seed: int,
    sharding: jax.sharding.NamedSharding,
    position: int = 0,
    extra_fields: ExtraFields | None = None,
) -> GlobalBatchIterator:
    """Endless shuffled global batches, starting at global batch `position`; `extra_fields`
    adds fields computed from each local host batch (see the module doc)."""
    _validate(
        info, split, "config.data.train_split", reader, global_batch_size, "config.batch_size"
    )
    if global_batch_size > info.splits[split]:
        raise ValueError(
            f"config.batch_size={global_batch_size} exceeds the {info.splits[split]} examples "
            f"of {info.name}[{split}]; set it to at most {info.splits[split]}"
        )
    local = READERS[reader].train_batches(
        info, split, global_batch_size, seed, position, jax.process_index(), jax.process_count(),
        add_fields=_adder(extra_fields),
    )
    return GlobalBatchIterator(local, sharding, global_batch_size, position)


def make_eval_iterator(
    info: DatasetInfo,
    *,
    split: str,
    reader: str,
    global_batch_size: int,
    sharding: jax.sharding.NamedSharding,
    extra_fields: ExtraFields | None = None,
) -> EvalBatches:
    """Every example of `split` once, in order, the last batch padded and masked; `extra_fields`
    adds fields computed from each local host batch (padding rows have index -1)."""
    _validate(
        info, split, "config.data.eval_split", reader, global_batch_size, "config.eval_batch_size"
    )
    return EvalBatches(info, split, reader, global_batch_size, sharding, extra_fields)
