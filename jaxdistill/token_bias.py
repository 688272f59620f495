"""The LM bias report by token frequency (issue 12 §3): which vocabulary ids are frequent or
rare in the training split, and per bucket the eval sums and metrics of `bias`.

The rule (`frequency_buckets`): count each id among the training split's targets (positions
of weight > 0: the tokens the model learns to predict), rank the ids by that count, most
frequent first and ties by id, and put id i in bucket floor(K * c_i / N), where c_i counts the
training targets of the ids ranked before i, N all of them and K = len(`bias.TOKEN_BUCKETS`)
= 4; ids never seen in training go to the last bucket, "rare". So each bucket covers about a
quarter of the training tokens: "frequent" is the handful of ids that make up the first
quarter, "rare" the long tail that makes up the last one. On held-out text of the same source
each bucket then holds about a quarter of the eval positions, so its accuracy and ECE rest on
comparable counts (log-frequency buckets would leave the rare bucket a few eval tokens on a
small corpus). An id heavier than a quarter of the tokens narrows the buckets after it (one
can be empty). The counts are read once per process and dataset, when the task prepares it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import bias
from jaxdistill.data.source import DatasetInfo, tfds_builder
from jaxdistill.losses import cross_entropy

NUM_BUCKETS = len(bias.TOKEN_BUCKETS)
_READ_ROWS = 1024  # windows read at a time while counting


@dataclasses.dataclass(frozen=True, eq=False)
class TokenBuckets:
    """The bucket of each vocabulary id and what each bucket holds of the training split."""

    table: np.ndarray               # [V] int32: bucket of each id
    vocab_ids: tuple[int, ...]      # ids per bucket
    train_share: tuple[float, ...]  # share of the training targets per bucket


def frequency_buckets(counts) -> np.ndarray:
    """[V] int32 bucket of each id from its training-target count [V] (module doc's rule)."""
    counts = np.asarray(counts, np.int64)
    order = np.argsort(-counts, kind="stable")
    before = np.cumsum(counts[order]) - counts[order]
    table = np.empty(len(counts), np.int32)
    table[order] = np.minimum(before * NUM_BUCKETS // max(int(counts.sum()), 1), NUM_BUCKETS - 1)
    table[counts == 0] = NUM_BUCKETS - 1
    return table


def from_counts(counts) -> TokenBuckets:
    """`TokenBuckets` of training-target counts [V]."""
    counts = np.asarray(counts, np.int64)
    table = frequency_buckets(counts)
    tokens = np.bincount(table, weights=counts, minlength=NUM_BUCKETS)
    return TokenBuckets(table, tuple(int(n) for n in np.bincount(table, minlength=NUM_BUCKETS)),
                        tuple(float(t / max(counts.sum(), 1)) for t in tokens))


@functools.lru_cache(maxsize=8)
def _target_counts(data_dir: str, tfds_name: str, split: str, vocab: int) -> np.ndarray:
    source = tfds_builder(tfds_name, data_dir).as_data_source(split)
    counts = np.zeros(vocab, np.int64)
    for start in range(0, len(source), _READ_ROWS):
        rows = source.__getitems__(list(range(start, min(start + _READ_ROWS, len(source)))))
        targets = np.stack([r["targets"] for r in rows])
        weights = np.stack([r["weights"] for r in rows])
        counts += np.bincount(targets[weights > 0], minlength=vocab)
    counts.flags.writeable = False  # shared by the cache
    return counts


def train_target_counts(info: DatasetInfo, split: str) -> np.ndarray:
    """[V] int64: how often each id is a target (weight > 0) in `split` of a token dataset."""
    return _target_counts(info.data_dir, info.tfds_name, split, info.num_classes)


def for_dataset(info: DatasetInfo, split: str) -> TokenBuckets:
    """The token buckets of a token dataset, counted on its training split `split`."""
    return from_counts(train_target_counts(info, split))


def _model_sums(prefix: str, logits, targets, member) -> dict:
    """One model's per-bucket correct next tokens, NLL and confidence-bin sums [K, bins, 3]."""
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), -1), -1)
    return {f"{prefix}bucket_correct": member.T @ correct,
            f"{prefix}bucket_nll": member.T @ cross_entropy(logits, targets),
            f"{prefix}bucket_calibration": jnp.stack([
                bias.binned_calibration(confidence, correct, member[:, k])
                for k in range(NUM_BUCKETS)])}


def bucket_sums(student_logits, teacher_logits, targets, weights, table) -> dict:
    """Sums [K] per bucket of the target token (`table` [V]) over positions weighted by
    `weights` [B, L] (0 on padding): positions, the student's correct next tokens, NLL and
    confidence-bin sums; with the teacher's logits (else None) its own, its errors and those
    where the student predicts the teacher's same wrong token."""
    vocab = student_logits.shape[-1]
    y = targets.reshape(-1)
    member = (jax.nn.one_hot(jnp.asarray(table)[y], NUM_BUCKETS, dtype=jnp.float32)
              * weights.reshape(-1, 1))  # [positions, K]
    s = student_logits.reshape(-1, vocab)
    sums = {"bucket_count": jnp.sum(member, 0), **_model_sums("", s, y, member)}
    if teacher_logits is not None:
        t = teacher_logits.reshape(-1, vocab)
        sums.update(_model_sums("teacher_", t, y, member))
        s_pred, t_pred = jnp.argmax(s, -1), jnp.argmax(t, -1)
        wrong, repeated = zip(*(bias.repeated_errors(s_pred, t_pred, y, member[:, k])
                                for k in range(NUM_BUCKETS)))
        sums["bucket_teacher_wrong"] = jnp.stack(wrong)
        sums["bucket_repeated"] = jnp.stack(repeated)
    return sums


def _model_metrics(prefix: str, sums: Mapping, count) -> dict:
    bins = sums[f"{prefix}bucket_calibration"]
    return {f"{prefix}bucket_accuracy": bias.per_class(count, sums[f"{prefix}bucket_correct"]),
            f"{prefix}bucket_nll": bias.per_class(count, sums[f"{prefix}bucket_nll"]),  # means
            f"{prefix}bucket_ece": [bias.expected_calibration_error(b) for b in bins],
            f"{prefix}ece": bias.expected_calibration_error(np.sum(bins, 0))}


def bucket_metrics(sums: Mapping, buckets: TokenBuckets) -> dict:
    """From `bucket_sums` added up over a split, lists [K]: eval tokens, vocabulary ids and
    training share, accuracy, mean NLL and ECE per bucket (0 where a bucket has no eval
    token), and the whole split's ECE; with a teacher, its own and the share of its errors
    the student repeats, per bucket and over the split."""
    count = np.asarray(sums["bucket_count"], np.float64)
    out = {"bucket_tokens": [int(c) for c in np.rint(count)],
           "bucket_vocab_ids": list(buckets.vocab_ids),
           "bucket_train_share": list(buckets.train_share), **_model_metrics("", sums, count)}
    if "bucket_repeated" in sums:
        out.update(_model_metrics("teacher_", sums, count))
        repeated, wrong = sums["bucket_repeated"], sums["bucket_teacher_wrong"]
        out["bucket_error_repeat"] = [float(r) / max(float(w), 1.0)
                                      for r, w in zip(repeated, wrong)]
        out["error_repeat"] = float(np.sum(repeated)) / max(float(np.sum(wrong)), 1.0)
    return out
