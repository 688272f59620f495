"""Contrastive Representation Distillation (CRD), the pure parts.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, following the
official code (RepDistiller `crd/memory.py` ContrastMemory, `crd/criterion.py` ContrastLoss).
The caller owns the state: the memory bank [N, D] (one L2-normalised row per training example),
the normaliser Z (set once from the first batch with `crd_normalizer`, then kept fixed, as the
official code does) and the rng. One CRD direction per call: the official loss sums two, the
student anchor against the teacher bank and the teacher anchor against the student bank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def crd_scores(anchor, bank, pos_indices, neg_indices, temperature: float = 0.07) -> jax.Array:
    """[B, K+1] unnormalised scores exp(<bank[idx], anchor> / tau), idx = [pos, negs...].

    `anchor` [B, D] and the `bank` rows [N, D] are L2-normalised by the caller; `pos_indices`
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
