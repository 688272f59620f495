"""Dense teacher logits from a store's top-k entries: what the step uses instead of the teacher.

Choice: the top-k probabilities are kept exactly and the remaining ("tail") mass
`1 - sum(top-k probs)` is spread uniformly over the other `C - k` classes. The result is a
vector of normalised log-probabilities, so `softmax(dense)` is that distribution.

Temperature. `kd_loss(student, dense, T)` softens `dense` as it would logits:
`q_T(i) ~ exp(dense_i / T)`.
- Top-k classes: `dense_i = z_i - logsumexp(z)`, a constant shift of the teacher's logits `z`,
  so ratios among them are the teacher's `exp((z_i - z_j) / T)` at EVERY temperature (this is
  why the store keeps logits, not probabilities).
- Tail classes: each has `dense_j = log(tail / m)` (m = C - k), so the softened tail weighs
  `m * (tail / m)^(1/T)` where the teacher's weighs `sum_j p_j^(1/T)`. For T > 1 the power
  `1/T` is concave, so by Jensen the approximation puts AT LEAST the teacher's softened mass on
  the tail (equal iff the teacher's tail is uniform), and correspondingly less on the top k;
  for T < 1 the inequality reverses. At T = 1 it is exact in total (top-k and tail mass), only
  the shape of the tail differs.
- With k = C there is no tail: `dense = z - logsumexp(z)`, whose softmax at any T equals the
  teacher's, so KD from a full-k store equals online KD at every temperature.
An exact alternative for one fixed T != 1 would be to store `logsumexp(z_tail / T)`; we store
`logsumexp(z_tail)` (T = 1), which keeps the tail mass exact even when it is far below float32's
resolution near 1 (what `1 - sum(top-k probs)` would lose, and what a high T magnifies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.store.format import FEATURE_PREFIX


def dense_teacher_logits(values, indices, logsumexp, num_classes: int, *,
                         tail_logsumexp=None) -> jax.Array:
    """[..., C] float32 log-probabilities from top-k logits `values` [..., k] (classes
    `indices` [..., k], distinct), the log-sum-exp of all logits `logsumexp` [...] and,
    optionally, of the logits outside the top k `tail_logsumexp` [...] (else the tail mass is
    derived as 1 - sum of the top-k probabilities). See the module doc."""
    values = jnp.asarray(values, jnp.float32)
    lse = jnp.asarray(logsumexp, jnp.float32)
    k = values.shape[-1]
    if not 0 < k <= num_classes:
        raise ValueError(f"dense_teacher_logits: k={k} entries for {num_classes} classes")
    log_p = values - lse[..., None]  # exact log-probabilities of the top k
    if k == num_classes:
        each = jnp.zeros(lse.shape, jnp.float32)  # no tail: every class is set below
    else:
        if tail_logsumexp is not None:
            log_tail = jnp.asarray(tail_logsumexp, jnp.float32) - lse
        else:
            tail = -jnp.expm1(jax.nn.logsumexp(log_p, axis=-1))
            log_tail = jnp.log(jnp.maximum(tail, jnp.finfo(jnp.float32).tiny))
        each = log_tail - jnp.log(num_classes - k)

    def row(log_p, indices, each):  # per example, so the batch keeps its sharding
        return jnp.full((num_classes,), each).at[indices].set(log_p)
    lead = values.shape[:-1]
    dense = jax.vmap(row)(log_p.reshape(-1, k), jnp.asarray(indices, jnp.int32).reshape(-1, k),
                          each.reshape(-1))
    return dense.reshape(*lead, num_classes)


def topk_entries(logits, k: int) -> dict[str, jax.Array]:
    """What a store keeps of logits [..., C] (the inverse of `dense_teacher_logits`):
    `values` the k largest logits (descending) and `indices` their classes, `logsumexp` over
    all C logits and `tail_logsumexp` over the C - k others (-inf when k = C), in float32."""
    logits = jnp.asarray(logits, jnp.float32)
    values, indices = jax.lax.top_k(logits, k)
    if k < logits.shape[-1]:
        top = jnp.put_along_axis(jnp.zeros(logits.shape, bool), indices, True, axis=-1,
                                 inplace=False)
        tail = jax.nn.logsumexp(jnp.where(top, -jnp.inf, logits), axis=-1)
    else:
        tail = jnp.full(logits.shape[:-1], -jnp.inf, jnp.float32)
    return {"values": values, "indices": indices.astype(jnp.int32),
            "logsumexp": jax.nn.logsumexp(logits, axis=-1), "tail_logsumexp": tail}


def teacher_outputs_from_batch(batch: dict, num_classes: int):
    """(dense teacher logits, {feature name: features}) from a batch fed by
    `TeacherStore.extra_fields`, without gradient: the drop-in for `step.teacher_outputs`."""
    logits = dense_teacher_logits(
        batch["teacher_topk_values"], batch["teacher_topk_indices"], batch["teacher_logsumexp"],
        num_classes, tail_logsumexp=batch.get("teacher_tail_logsumexp"))
    features = {k.removeprefix(FEATURE_PREFIX): v for k, v in batch.items()
                if k.startswith(FEATURE_PREFIX)}
    return jax.lax.stop_gradient((logits, features))
