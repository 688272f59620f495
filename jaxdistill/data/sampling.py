"""Which examples form which batch, and which rows of it each process holds.

Train: epoch `e` is a fresh permutation of the split, shuffled with a seed derived from
(seed, e); global batch `n` is batch `n % batches_per_epoch` of epoch `n // batches_per_epoch`,
and the remainder of each epoch (num_examples % global_batch_size examples) is dropped.
Global batch `n` is a pure function of (num_examples, global_batch_size, seed, n): it does not
depend on the number of processes, which only decides who reads which rows.

Eval: global batch `n` holds examples [n*B, (n+1)*B) in order; the last one is padded.
"""

import grain
import numpy as np

from jaxdistill.data import packing


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit shuffle seed of one epoch (distinct runs do not share epochs)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def batches_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return num_examples // global_batch_size


def train_batch_indices(num_examples: int, global_batch_size: int, seed: int, n: int) -> np.ndarray:
    """Example indices of global train batch `n`, in row order."""
    epoch, j = divmod(n, batches_per_epoch(num_examples, global_batch_size))
    order = grain.MapDataset.range(num_examples).shuffle(seed=epoch_seed(seed, epoch))
    start = j * global_batch_size
    return np.array([order[i] for i in range(start, start + global_batch_size)], np.int64)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    return -(-num_examples // global_batch_size)


def eval_batch_positions(global_batch_size: int, n: int) -> np.ndarray:
    """Example indices of global eval batch `n`, before padding (may run past the split)."""
    return np.arange(n * global_batch_size, (n + 1) * global_batch_size)


def process_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The contiguous block of a global batch that process `process_index` holds."""
    size = len(rows) // process_count
    return rows[process_index * size : (process_index + 1) * size]


def pad_rows(fields: dict, indices, rows: int, *, with_mask: bool = False) -> dict:
    """A host batch of `rows` rows: `fields` (each [len(indices), ...]), then index int32.

    Rows past the given examples are padding: zero in every field, index -1, and (with
    `with_mask`) mask 0.0 where real rows have 1.0.
    """
    pad = rows - len(indices)
    batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in fields.items()}
    batch["index"] = np.pad(np.asarray(indices, np.int32), (0, pad), constant_values=-1)
    if with_mask:
        batch["mask"] = (np.arange(rows) < len(indices)).astype(np.float32)
    return batch


def make_batch(images, labels, indices, rows: int, *, with_mask: bool = False) -> dict:
    """A host image batch (`pad_rows`): image float32 in [0, 1], label int32, index, mask."""
    fields = {"image": np.asarray(images, np.float32) / 255.0, "label": np.asarray(labels, np.int32)}
    return pad_rows(fields, indices, rows, with_mask=with_mask)


def token_batch(examples, indices, rows: int, seq_len: int, *, with_mask: bool = False,
                extra_fields: dict | None = None) -> dict:
    """A host token batch (`pad_rows`) from examples holding `packing.FIELDS` [seq_len] and
    the dataset's `extra_fields` (name -> (length, dtype name), e.g. a second tokenizer's)."""
    shapes = {k: (seq_len, dtype) for k, dtype in packing.FIELDS.items()}
    shapes.update({k: (length, np.dtype(dtype)) for k, (length, dtype) in
                   (extra_fields or {}).items()})
    fields = {k: np.array([e[k] for e in examples], dtype).reshape(-1, length)
              for k, (length, dtype) in shapes.items()}
    return pad_rows(fields, indices, rows, with_mask=with_mask)
