"""Adversarial distillation losses: a discriminator tells teacher outputs from student outputs.

Non-saturating GAN losses on discriminator logits (Goodfellow et al., "Generative Adversarial
Nets", 2014), with teacher outputs as "real", as used for adversarial KD by Xu et al. 2018
("Training Shallow and Thin Networks for Acceleration via Knowledge Distillation with
Conditional Adversarial Networks") and Wang et al. 2018 ("KDGAN"). Scores may be [B] or
[B, 1]; both losses return [B] and are computed in (at least) float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses.logits import _as_float


def _scores(name: str, scores) -> jax.Array:
    shape = jnp.shape(scores)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ValueError(f"{name} must have shape [B] or [B, 1], got {name}.shape={shape}")
    return _as_float(scores).reshape(shape[0])


def discriminator_loss(teacher_scores, student_scores) -> jax.Array:
    """Per example -log sigmoid(d_t) - log(1 - sigmoid(d_s)) = softplus(-d_t) + softplus(d_s)."""
    d_t = _scores("teacher_scores", teacher_scores)
    d_s = _scores("student_scores", student_scores)
    if d_t.shape != d_s.shape:
        raise ValueError(
            "teacher_scores and student_scores must have the same batch size, got "
            f"teacher_scores.shape={jnp.shape(teacher_scores)} and "
            f"student_scores.shape={jnp.shape(student_scores)}"
        )
    return jax.nn.softplus(-d_t) + jax.nn.softplus(d_s)


def generator_loss(student_scores) -> jax.Array:
    """Per example non-saturating generator loss -log sigmoid(d_s) = softplus(-d_s)."""
    return jax.nn.softplus(-_scores("student_scores", student_scores))
