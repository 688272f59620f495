"""Token divergences against a teacher known only by its top-k entries, without densifying.

An offline token store (`jaxdistill.store.tokens`) keeps, per position, the teacher's k
largest log-probabilities `log p_i` (i in S, the stored token ids) and the log of the mass
outside them, `log tail = log(1 - sum_S p_i)`. The divergence is taken between two
distributions over k + 1 buckets: the k stored tokens and one bucket for the rest.

- Student (exact): `log s_i = log_softmax(z / T)[i]` gathered at the stored ids from its full
  vocabulary (in a chunked step one chunk of positions at a time), and its tail bucket
  `log(1 - sum_S s_i)`, taken in log space (`log(-expm1(logsumexp(log s_S)))`).
- Teacher at temperature T: the stored tokens keep the teacher's exact ratios
  `p_i^(1/T)`; its tail, whose shape is not stored, is taken as spread evenly over the
  m = V - k other tokens, so it weighs `m (tail / m)^(1/T)` (the choice of the classification
  store's `dense_teacher_logits`; by Jensen at least the true softened tail for T > 1). At
  T = 1 both buckets are exact.

Merging tokens into one bucket can only lower a divergence (data processing), so the
bucketed KL is a lower bound of the full one that tightens as k grows; with k = V there is
no tail bucket and every divergence equals the online one.

`bucket_logits` returns both distributions as logits at temperature T (`T * log q`), so the
dense losses of `jaxdistill.losses.logits` apply to them unchanged: `kd_loss(s, t, T)` is
`T^2 KL` over the buckets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TeacherEntries(NamedTuple):
    """A teacher's stored top-k per position: `log_probs` [..., k] (any float dtype, at
    T = 1), `ids` [..., k] (any int dtype, distinct per position) and `log_tail` [...] (the
    log of the mass outside them; -inf when k = V)."""

    log_probs: jax.Array
    ids: jax.Array
    log_tail: jax.Array


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x <= 0 (x above 0 from rounding counts as 0), floored at the log
    of float32's smallest normal so that an empty tail stays finite (zero gradient there)."""
    one_minus = -jnp.expm1(jnp.minimum(x, 0.0))
    return jnp.log(jnp.maximum(one_minus, jnp.finfo(jnp.float32).tiny))


def bucket_logits(student_logits, entries: TeacherEntries, vocab_size: int | None = None,
                  temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(student, teacher) logits over the k stored tokens and, when k < V, the tail bucket
    ([..., k + 1]; [..., k] when k = V), scaled so that `softmax(x / temperature)` is each
    side's bucketed distribution (module doc). `student_logits` [..., V]; V is its last axis
    unless `vocab_size` says otherwise."""
    z = jnp.asarray(student_logits).astype(jnp.float32)
    v = int(vocab_size or z.shape[-1])
    log_p = jnp.asarray(entries.log_probs).astype(jnp.float32)
    k = log_p.shape[-1]
    if not 0 < k <= v or z.shape[:-1] != log_p.shape[:-1]:
        raise ValueError(f"stored teacher entries of shape {log_p.shape} do not fit student "
                         f"logits of shape {z.shape} (k must be in [1, V={v}])")
    t = float(temperature)
    log_s = jnp.take_along_axis(jax.nn.log_softmax(z / t, axis=-1),
                                jnp.asarray(entries.ids).astype(jnp.int32), axis=-1)
    teacher = log_p / t
    if k < v:
        m = jnp.log(jnp.float32(v - k))
        tail = m + (jnp.asarray(entries.log_tail, jnp.float32) - m) / t
        teacher = jnp.concatenate([teacher, tail[..., None]], axis=-1)
        log_s = jnp.concatenate(
            [log_s, log1mexp(jax.nn.logsumexp(log_s, axis=-1))[..., None]], axis=-1)
    teacher = jax.nn.log_softmax(teacher, axis=-1)
    return t * log_s, t * teacher


def teacher_top1(entries: TeacherEntries) -> jax.Array:
    """The teacher's most likely token per position (entries are stored largest first)."""
    return jnp.asarray(entries.ids[..., 0]).astype(jnp.int32)
