"""Distillation between models with different vocabularies, per aligned position.

Both losses take the student's logits [..., Vs] and the teacher's logits [..., Vt] at
aligned positions (`data.xtok_packing`: both models have read the same text and predict
what follows it) and return per-position values [...]. They need no shared vocabulary.

- `uld_loss`: Universal Logit Distillation (Boizard et al., "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs", 2024): the Wasserstein-1
  distance between the two probability vectors sorted in decreasing order, the shorter
  padded with zeros to the longer's length, with unit cost between neighbouring ranks;
  in closed form `sum_i |a_(i) - b_(i)|`. Only the top min(Vs, Vt) entries of the longer
  vector can meet a non-zero entry of the shorter, so its other entries count by their sum
  (`1 - sum of its top k`); no full sort of the larger vocabulary is needed.
- `merged_kl`: the alignment method. The student's tokens are merged onto the teacher's
  units through their common text: `token_map[v]` is the teacher token that student token
  v's text starts with (for a byte-level teacher: v's first byte), and the student's
  probability of teacher unit u is `q(u) = sum_{v: token_map[v] = u} p(v)`. For a
  byte-level teacher that is exactly the student's probability that the next byte is u
  (every student token boundary is a byte boundary), so `KL(p_teacher || q)` compares the
  two models' next-byte distributions at the same text position, with the student's full
  distribution in the gradient. This is the merged-probability rule of token-alignment
  methods (TRL's GOLD merges the probabilities of a span's tokens; Minixhofer et al. 2025,
  "Universal Cross-Tokenizer Distillation via Approximate Likelihood Matching", compare
  likelihoods of aligned text chunks); it is chosen over span-likelihood matching because
  it transfers the teacher's whole next-unit distribution, not one probability per span.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses.logits import _as_float, _check_positive, _kl


def uld_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
             temperature: float = 1.0) -> jax.Array:
    """Per position: W1 between the sorted, zero-padded softmaxes at `temperature` (see
    module doc); in [0, 2]."""
    _check_positive("temperature", temperature)
    p_s = jax.nn.softmax(_as_float(student_logits) / temperature, axis=-1)
    p_t = jax.nn.softmax(_as_float(teacher_logits) / temperature, axis=-1)
    k = min(p_s.shape[-1], p_t.shape[-1])
    top_s, top_t = jax.lax.top_k(p_s, k)[0], jax.lax.top_k(p_t, k)[0]
    tail = 0.0
    for top, p in ((top_s, p_s), (top_t, p_t)):
        if p.shape[-1] > k:  # the longer vector's ranks beyond k meet zeros
            tail = tail + jnp.maximum(1.0 - jnp.sum(top, axis=-1), 0.0)
    return jnp.sum(jnp.abs(top_s - top_t), axis=-1) + tail


def merged_log_probs(student_logits: jax.Array, token_map: jax.Array, num_units: int, *,
                     temperature: float = 1.0) -> jax.Array:
    """[..., num_units]: log q(u), the student's log-probability of each teacher unit, the
    log-sum-exp of its log-softmax over the student tokens that `token_map` [Vs] sends to
    u (every unit must have one)."""
    logp = jax.nn.log_softmax(_as_float(student_logits) / temperature, axis=-1)
    flat = logp.reshape(-1, logp.shape[-1]).T  # [Vs, N]: segments along the leading axis
    peak = jax.lax.stop_gradient(jax.ops.segment_max(flat, token_map, num_units))
    total = jax.ops.segment_sum(jnp.exp(flat - peak[token_map]), token_map, num_units)
    return (peak + jnp.log(total)).T.reshape(*logp.shape[:-1], num_units)


def merged_kl(student_logits: jax.Array, teacher_logits: jax.Array, token_map: jax.Array, *,
              temperature: float = 1.0) -> jax.Array:
    """Per position: KL(p_teacher || q_student) over the teacher's units, q the student's
    distribution merged through `token_map` (module doc), both at `temperature`, times
    temperature^2 (Hinton et al.'s gradient scale)."""
    _check_positive("temperature", temperature)
    num_units = teacher_logits.shape[-1]
    log_q = merged_log_probs(student_logits, token_map, num_units, temperature=temperature)
    log_p = jax.nn.log_softmax(_as_float(teacher_logits) / temperature, axis=-1)
    return temperature ** 2 * _kl(log_p, log_q)
