"""Sentence-embedding distillation losses: pooled embeddings and masked token-level transfer.

Pure functions in (at least) float32, one value per sentence [B]. Embeddings [B, D] are
compared after L2 normalisation (the sentence-transformers embedding), hidden states
[B, L, D] and attention maps [B, H, L, L] per real token (`mask` [B, L], 1 = real), so padding
never counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses.features import attention_distribution_loss, hint_loss, l2_normalize
from jaxdistill.losses.logits import _as_float


def _check_embeddings(s, t) -> None:
    if jnp.ndim(s) != 2 or jnp.shape(s) != jnp.shape(t):
        raise ValueError("embeddings must be [B, D] of one shape, got "
                         f"student.shape={jnp.shape(s)} and teacher.shape={jnp.shape(t)}")


def cosine_distance(student_embeddings, teacher_embeddings) -> jax.Array:
    """Per sentence 1 - cos(s, t) (the cosine embedding loss of sentence-transformers'
    distillation recipes; 0 when the directions agree)."""
    _check_embeddings(student_embeddings, teacher_embeddings)
    s, t = (l2_normalize(_as_float(x)) for x in (student_embeddings, teacher_embeddings))
    return 1.0 - jnp.sum(s * t, axis=-1)


def normalized_mse(student_embeddings, teacher_embeddings) -> jax.Array:
    """Per sentence the mean over D of (s/|s| - t/|t|)^2: the MSE of the unit embeddings
    (Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation", EMNLP 2020, on the normalised output). Equals 2 (1 - cos) / D."""
    _check_embeddings(student_embeddings, teacher_embeddings)
    s, t = (l2_normalize(_as_float(x)) for x in (student_embeddings, teacher_embeddings))
    return jnp.mean(jnp.square(s - t), axis=-1)


def masked_token_mean(values, mask) -> jax.Array:
    """[B] mean of per-token `values` [B, L] over the tokens where `mask` [B, L] is 1."""
    mask = _as_float(mask)
    return jnp.sum(_as_float(values) * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def _check_mask(x, batch_and_length: tuple[int, int], mask, what: str) -> None:
    if tuple(jnp.shape(mask)) != tuple(batch_and_length):
        raise ValueError(f"{what} of shape {jnp.shape(x)} do not fit the token mask of shape "
                         f"{jnp.shape(mask)} ([B, L])")


def masked_hidden_mse(student_hidden, teacher_hidden, mask) -> jax.Array:
    """Hidden-state transfer (Jiao et al., "TinyBERT", Findings of EMNLP 2020, with equal
    widths): per sentence the mean over real tokens of the mean over D of (h_s - h_t)^2."""
    _check_mask(student_hidden, jnp.shape(student_hidden)[:2], mask, "hidden states")
    b, length = jnp.shape(student_hidden)[:2]
    per_token = hint_loss(jnp.reshape(student_hidden, (b * length, -1)),
                          jnp.reshape(teacher_hidden, (b * length, -1))).reshape(b, length)
    return masked_token_mean(per_token, mask)


def masked_attention_kl(student_attention, teacher_attention, mask) -> jax.Array:
    """Self-attention distribution transfer (Wang et al., "MiniLM", NeurIPS 2020):
    `attention_distribution_loss` (KL(A_t || A_s) per query, averaged over heads) averaged
    over the real query tokens. Padding keys carry probability 0 in both maps."""
    _check_mask(student_attention, jnp.shape(student_attention)[::2], mask, "attention maps")
    return masked_token_mean(attention_distribution_loss(student_attention, teacher_attention),
                             mask)
