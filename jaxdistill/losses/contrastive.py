"""Contrastive Representation Distillation (CRD), the pure parts.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, following the
official code (RepDistiller `crd/memory.py` ContrastMemory, `crd/criterion.py` ContrastLoss).
The caller owns the state: the memory bank [N, D] (one row per training example, drawn
uniformly by `crd_init_bank` and L2-normalised by each momentum update), the normaliser Z (set once from the first batch with `crd_normalizer`, then kept fixed, as the
official code does) and the rng. One CRD direction per call: the official loss sums two, the
student anchor against the teacher bank and the teacher anchor against the student bank.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.losses.features import l2_normalize
from jaxdistill.losses.logits import _as_float, _check_interval, _check_positive

_NCE_EPS = 1e-7


def _check_num_data(num_data) -> None:
    if not isinstance(num_data, int) or isinstance(num_data, bool) or num_data < 1:
        raise ValueError(f"num_data must be a positive Python int, got {num_data!r}")


def _check_indices(name: str, indices, shape: tuple) -> None:
    if jnp.shape(indices) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {name}.shape={jnp.shape(indices)}")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise ValueError(f"{name} must be integer indices, got dtype {jnp.result_type(indices)}")


def crd_init_bank(rng, num_data: int, dim: int) -> jax.Array:
    """[num_data, dim] float32 memory rows uniform in [-1/sqrt(dim/3), 1/sqrt(dim/3)], not
    normalised: the `memory_v1` / `memory_v2` buffers of RepDistiller's `ContrastMemory`
    (each row has E||row||^2 = 1; a row is normalised when its example first updates it)."""
    _check_num_data(num_data)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive Python int, got {dim!r}")
    stdv = 1.0 / math.sqrt(dim / 3.0)
    return jax.random.uniform(rng, (num_data, dim), jnp.float32, minval=-stdv, maxval=stdv)


def crd_scores(anchor, bank, pos_indices, neg_indices, temperature: float = 0.07) -> jax.Array:
    """[B, K+1] unnormalised scores exp(<bank[idx], anchor> / tau), idx = [pos, negs...].

    `anchor` [B, D] is L2-normalised by the caller, the `bank` rows [N, D] are as the memory holds
them (`crd_init_bank`, then `crd_update_bank`); `pos_indices`
    [B] and `neg_indices` [B, K] index the bank. The gathered bank rows are under stop_gradient
    (the official memory is a buffer), so gradients reach the anchor only.
    """
    a_shape, b_shape = jnp.shape(anchor), jnp.shape(bank)
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != b_shape[1]:
        raise ValueError(
            "anchor [B, D] and bank [N, D] must be 2-D with the same width, got "
            f"anchor.shape={a_shape} and bank.shape={b_shape}"
        )
    if len(jnp.shape(neg_indices)) != 2:
        raise ValueError(f"neg_indices must be [B, K], got shape {jnp.shape(neg_indices)}")
    _check_indices("pos_indices", pos_indices, (a_shape[0],))
    _check_indices("neg_indices", neg_indices, (a_shape[0], jnp.shape(neg_indices)[1]))
    _check_positive("temperature", temperature)
    idx = jnp.concatenate([jnp.asarray(pos_indices)[:, None], jnp.asarray(neg_indices)], axis=1)
    weights = jax.lax.stop_gradient(_as_float(bank)[idx])  # [B, K+1, D]
    return jnp.exp(jnp.einsum("bkd,bd->bk", weights, _as_float(anchor)) / temperature)


def crd_normalizer(scores, num_data: int) -> jax.Array:
    """Scalar Z = mean(scores) * num_data, under stop_gradient.

    The official code computes Z once, from the first batch's scores, and keeps it fixed for
    the rest of training: the caller stores the returned value and passes it to every later
    `crd_nce_loss` call.
    """
    _check_num_data(num_data)
    return jax.lax.stop_gradient(jnp.mean(_as_float(scores)) * num_data)


def crd_nce_loss(scores, normalizer, num_data: int) -> jax.Array:
    """Per-example NCE loss of CRD (ContrastLoss), column 0 positive, columns 1..K noise.

    P = scores / normalizer, Pn = 1 / num_data, K = scores.shape[1] - 1:
    -[log(P_0 / (P_0 + K Pn + eps)) + sum_{j>=1} log(K Pn / (P_j + K Pn + eps))], eps = 1e-7.
    The official loss is the batch sum / B, i.e. the mean of these values.
    """
    shape = jnp.shape(scores)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"scores must be [B, K+1] with K >= 1, got scores.shape={shape}")
    _check_num_data(num_data)
    if jnp.ndim(normalizer) != 0:
        raise ValueError(f"normalizer must be a scalar, got shape {jnp.shape(normalizer)}")
    _check_positive("normalizer", normalizer)
    p = _as_float(scores) / normalizer
    k_pn = (shape[1] - 1) / num_data
    log_d1 = jnp.log(p[:, 0] / (p[:, 0] + k_pn + _NCE_EPS))
    log_d0 = jnp.log(k_pn / (p[:, 1:] + k_pn + _NCE_EPS))
    return -(log_d1 + jnp.sum(log_d0, axis=1))


def crd_update_bank(bank, indices, embeddings, momentum: float = 0.5) -> jax.Array:
    """Returns the bank with rows `indices` = normalize(momentum * bank[idx] + (1 - m) * emb).

    Pure (`.at[].set`) and under stop_gradient, as the official no-grad update; normalisation
    divides by max(||row||, 1e-12). With duplicate indices in one batch, which update wins is
    unspecified (as with the official `index_copy_`). Returns float32 (at least).
    """
    b_shape, e_shape = jnp.shape(bank), jnp.shape(embeddings)
    if len(b_shape) != 2 or len(e_shape) != 2 or b_shape[1] != e_shape[1]:
        raise ValueError(
            "bank [N, D] and embeddings [B, D] must be 2-D with the same width, got "
            f"bank.shape={b_shape} and embeddings.shape={e_shape}"
        )
    _check_indices("indices", indices, (e_shape[0],))
    _check_interval("momentum", momentum, 0.0, 1.0, closed_low=True, closed_high=True)
    bank = _as_float(bank)
    rows = momentum * bank[indices] + (1.0 - momentum) * _as_float(embeddings)
    return jax.lax.stop_gradient(bank.at[indices].set(l2_normalize(rows)))


def sample_negatives(
    rng, batch_size: int, num_negatives: int, num_data: int, pos_indices=None
) -> jax.Array:
    """[B, K] int32 negative indices, uniform over [0, num_data) excluding each row's positive.

    The official code draws uniformly (alias sampler, uniform weights) and lets a negative
    collide with the positive now and then. Here, when `pos_indices` [B] is given, each row is
    drawn uniformly from the num_data - 1 other examples (draw from [0, N-1), shift values >= pos
    up by one), so a positive is never its own negative; with `pos_indices=None` it is plain
    uniform over [0, N). Negatives within a row are drawn with replacement, as in the original.
    """
    for name, value in (("batch_size", batch_size), ("num_negatives", num_negatives)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive Python int, got {value!r}")
    _check_num_data(num_data)
    shape = (batch_size, num_negatives)
    if pos_indices is None:
        return jax.random.randint(rng, shape, 0, num_data, dtype=jnp.int32)
    if num_data < 2:
        raise ValueError(f"num_data must be >= 2 to exclude positives, got {num_data}")
    _check_indices("pos_indices", pos_indices, (batch_size,))
    draws = jax.random.randint(rng, shape, 0, num_data - 1, dtype=jnp.int32)
    pos = jnp.asarray(pos_indices, jnp.int32)[:, None]
    return draws + (draws >= pos).astype(jnp.int32)


def max_other_class_negatives(split_labels) -> int:
    """The most negatives `sample_other_class_negatives` draws without replacement for every
    class of `split_labels` (concrete [N]): N minus the size of the largest class."""
    labels = np.asarray(split_labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"split_labels must be a non-empty 1-D array of integer class ids, got "
                         f"shape {labels.shape} and dtype {labels.dtype}")
    return int(labels.size - np.unique(labels, return_counts=True)[1].max())


def sample_other_class_negatives(rng, labels, split_labels, num_negatives: int) -> jax.Array:
    """[B, K] int32 negatives: for each row, K distinct examples of classes other than its label.

    RepDistiller's `CIFAR100InstanceSample` (mode 'exact'): `np.random.choice(cls_negative[y],
    K, replace=False)`, where cls_negative[y] holds every training example whose label is not
    y. `labels` [B] are the batch's labels and `split_labels` [N] those of the whole training
    split (index i = example i). Each row is a uniformly random K-subset of its pool, in random
    order: the K largest of N random 32-bit keys, the same-class keys set to 0. K must not
    exceed the smallest pool (`max_other_class_negatives`; the reference then draws with
    replacement): checked when `split_labels` is concrete. O(B N) work per call.
    """
    if not isinstance(num_negatives, int) or isinstance(num_negatives, bool) or num_negatives < 1:
        raise ValueError(f"num_negatives must be a positive Python int, got {num_negatives!r}")
    b_shape, n_shape = jnp.shape(labels), jnp.shape(split_labels)
    if len(b_shape) != 1 or len(n_shape) != 1:
        raise ValueError(f"labels [B] and split_labels [N] must be 1-D, got labels.shape={b_shape} "
                         f"and split_labels.shape={n_shape}")
    _check_indices("labels", labels, b_shape)
    _check_indices("split_labels", split_labels, n_shape)
    if not isinstance(split_labels, jax.core.Tracer):
        most = max_other_class_negatives(split_labels)
        if num_negatives > most:
            raise ValueError(f"num_negatives={num_negatives} exceeds the {most} examples of other "
                             "classes than the largest class of the split")
    keys = jax.random.bits(rng, (b_shape[0], n_shape[0]), jnp.uint32) | jnp.uint32(1)
    same = jnp.asarray(split_labels)[None, :] == jnp.asarray(labels)[:, None]
    _, idx = jax.lax.top_k(jnp.where(same, jnp.uint32(0), keys), num_negatives)
    return idx.astype(jnp.int32)
