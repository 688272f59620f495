"""Losses on logits: cross-entropy, KD, DKD and the f-divergence family.

All functions are pure, compute in (at least) float32 and reduce only over the class axis
(the last axis): they return one value per example / position and the caller reduces.
Argument checks run in Python at trace time on static shapes and values.

Shared private helpers (`_as_float`, `_check_*`, `_kl`) are imported by the sibling loss
modules; they live here because logits are the base case every family builds on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------- helpers


def _as_float(x) -> jax.Array:
    """Casts to float32 (bf16/fp16/int inputs); float64 stays float64 (x64 mode, tests)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _is_static(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_positive(name: str, value) -> None:
    """Raises if a static `value` is not > 0; traced values (e.g. schedules) pass unchecked."""
    if _is_static(value) and not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_interval(name: str, value, low, high, *, closed_low: bool, closed_high: bool):
    """Raises if a static `value` is outside the interval; traced values pass unchecked."""
    if not _is_static(value):
        return
    v = float(value)
    ok_low = v >= low if closed_low else v > low
    ok_high = v <= high if closed_high else v < high
    if not (ok_low and ok_high):
        lb, rb = "[" if closed_low else "(", "]" if closed_high else ")"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value}")


def _check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got "
            f"{name_a}.shape={jnp.shape(a)} and {name_b}.shape={jnp.shape(b)}"
        )


def _check_labels(logits, labels, *, name: str = "logits", min_classes: int = 1) -> None:
    shape, lshape = jnp.shape(logits), jnp.shape(labels)
    if len(shape) < 1 or shape[-1] < min_classes:
        raise ValueError(
            f"{name} need at least {min_classes} classes on the last axis, got {name}.shape={shape}"
        )
    if lshape != shape[:-1]:
        raise ValueError(
            f"labels.shape must equal {name}.shape[:-1], got labels.shape={lshape} "
            f"and {name}.shape={shape}"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {jnp.result_type(labels)}")


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) over the last axis, with 0 log 0 = 0.

    Entries with p_i = 0 (log p_i = -inf) contribute exactly 0 and no NaN gradient (double
    `where`), so masked classes (logits of -inf) are safe on either side where p_i = 0.
    """
    p = jnp.exp(log_p)
    support = p > 0
    diff = jnp.where(support, log_p - log_q, 0.0)
    return jnp.sum(jnp.where(support, p * diff, 0.0), axis=-1)


def standardize_logits(logits) -> jax.Array:
    """Z-scores each logit vector over the last axis: (z - mean) / (1e-7 + std), std with ddof=1.

    Logit standardisation of Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024 (matching their code: unbiased std, 1e-7 added to the std). Logits must be finite.
    """
    z = _as_float(logits)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"standardize needs at least 2 classes, got logits.shape={z.shape}")
    mean = jnp.mean(z, axis=-1, keepdims=True)
    std = jnp.std(z, axis=-1, keepdims=True, ddof=1)
    return (z - mean) / (1e-7 + std)


def _log_softmax_pair(student_logits, teacher_logits, temperature):
    """Validates the pair and returns (log p_s, log p_t) with p = softmax(logits / temperature)."""
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if jnp.ndim(student_logits) < 1:
        raise ValueError(f"logits need a class axis, got shape {jnp.shape(student_logits)}")
    _check_positive("temperature", temperature)
    log_p_s = jax.nn.log_softmax(_as_float(student_logits) / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(_as_float(teacher_logits) / temperature, axis=-1)
    return log_p_s, log_p_t


# --------------------------------------------------------------------------- losses


def cross_entropy(logits, labels, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy with integer labels, one value per example (shape `labels.shape`).

    With `label_smoothing` = e the target is (1 - e) one_hot + e / C (Szegedy et al., 2016),
    i.e. loss = (1 - e) * NLL + e * mean_c(-log p_c).
    """
    _check_labels(logits, labels)
    _check_interval(
        "label_smoothing", label_smoothing, 0.0, 1.0, closed_low=True, closed_high=False
    )
    log_p = jax.nn.log_softmax(_as_float(logits), axis=-1)
    nll = -jnp.take_along_axis(log_p, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    if _is_static(label_smoothing) and float(label_smoothing) == 0.0:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)


def kd_loss(
    student_logits, teacher_logits, temperature: float = 4.0, standardize: bool = False
) -> jax.Array:
    """Hinton KD: tau^2 * KL(p_t || p_s) with p = softmax(logits / tau), per example.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015. With
    `standardize=True` both logit vectors are first z-scored (`standardize_logits`, Sun et al.,
    CVPR 2024). Reduces the last axis only; returns `student_logits.shape[:-1]`.
    """
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return temperature**2 * _kl(log_p_t, log_p_s)


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> jax.Array:
    """KL(p_t || p_s) per position over the last axis (no tau^2 factor); any leading shape."""
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return _kl(log_p_t, log_p_s)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> jax.Array:
    """KL(p_s || p_t) per position over the last axis (mode-seeking; e.g. Gu et al., MiniLLM)."""
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return _kl(log_p_s, log_p_t)


def _log_mixture(log_a: jax.Array, log_b: jax.Array, alpha) -> jax.Array:
    """log(alpha a + (1 - alpha) b) from log a and log b; alpha in [0, 1)."""
    if _is_static(alpha) and float(alpha) == 0.0:
        return log_b
    return jnp.logaddexp(log_a + jnp.log(alpha), log_b + jnp.log1p(-alpha))


def skew_kl(student_logits, teacher_logits, alpha: float = 0.1,
            temperature: float = 1.0) -> jax.Array:
    """Skew KL per position: KL(p_t || alpha p_t + (1 - alpha) p_s), alpha in [0, 1).

    Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML
    2024; alpha = 0 is the forward KL, and any alpha > 0 bounds it by log(1 / alpha).
    """
    _check_interval("alpha", alpha, 0.0, 1.0, closed_low=True, closed_high=False)
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return _kl(log_p_t, _log_mixture(log_p_t, log_p_s, alpha))


def skew_reverse_kl(student_logits, teacher_logits, alpha: float = 0.1,
                    temperature: float = 1.0) -> jax.Array:
    """Skew reverse KL per position: KL(p_s || alpha p_s + (1 - alpha) p_t), alpha in [0, 1)
    (Ko et al., DistiLLM, ICML 2024); alpha = 0 is the reverse KL."""
    _check_interval("alpha", alpha, 0.0, 1.0, closed_low=True, closed_high=False)
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return _kl(log_p_s, _log_mixture(log_p_s, log_p_t, alpha))


def jsd(student_logits, teacher_logits, temperature: float = 1.0, beta: float = 0.5) -> jax.Array:
    """Generalised Jensen-Shannon divergence per position over the last axis.

    beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta p_t + (1 - beta) p_s, beta in
    (0, 1); log m is formed with logaddexp (Agarwal et al., "On-Policy Distillation of Language
    Models", ICLR 2024). Bounded by the entropy of (beta, 1 - beta), log 2 at beta = 0.5.
    """
    _check_interval("beta", beta, 0.0, 1.0, closed_low=False, closed_high=False)
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    log_m = jnp.logaddexp(log_p_t + jnp.log(beta), log_p_s + jnp.log1p(-beta))
    return beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)


def tvd(student_logits, teacher_logits, temperature: float = 1.0) -> jax.Array:
    """Total variation distance 1/2 sum |p_t - p_s| per position over the last axis, in [0, 1]."""
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p_t) - jnp.exp(log_p_s)), axis=-1)


def _binary_log_probs(log_p: jax.Array, target_mask: jax.Array) -> jax.Array:
    """[..., 2] log-probabilities of (target, all non-target classes) from full log_softmax."""
    log_target = jnp.sum(jnp.where(target_mask, log_p, 0.0), axis=-1)
    log_rest = jax.nn.logsumexp(jnp.where(target_mask, -jnp.inf, log_p), axis=-1)
    return jnp.stack([log_target, log_rest], axis=-1)


def dkd_loss(
    student_logits,
    teacher_logits,
    labels,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> jax.Array:
    """Decoupled KD: alpha * TCKD + beta * NCKD per example (Zhao et al., CVPR 2022).

    TCKD = tau^2 KL(b_t || b_s) over the binary (target, rest) probabilities of
    softmax(logits / tau); log(rest) is a logsumexp of the non-target log-probabilities, so no
    log(1 - p) cancellation. NCKD = tau^2 KL over the non-target classes only: the official code
    subtracts 1000 from the target entry of logits / tau before (log_)softmax; here the target
    entry is set to -inf instead, which is that construction without its exp(-1000) residual
    (and its gradient leak), and `_kl` treats the resulting p = 0 entry as 0 log 0 = 0.
    With `standardize=True` both logit vectors are first z-scored (`standardize_logits`), then
    divided by tau and masked by the labels, as `dkd_loss(..., logit_stand=True)` of Sun et al.,
    "Logit Standardization in Knowledge Distillation", CVPR 2024 (their mdistiller fork).
    Needs at least 2 classes; returns `labels.shape`.
    """
    _check_labels(student_logits, labels, name="student_logits", min_classes=2)
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    log_p_s, log_p_t = _log_softmax_pair(student_logits, teacher_logits, temperature)
    num_classes = log_p_s.shape[-1]
    target_mask = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)

    tckd = _kl(_binary_log_probs(log_p_t, target_mask), _binary_log_probs(log_p_s, target_mask))
    # Non-target distributions: renormalise log p with the target class removed.
    nckd = _kl(
        jax.nn.log_softmax(jnp.where(target_mask, -jnp.inf, log_p_t), axis=-1),
        jax.nn.log_softmax(jnp.where(target_mask, -jnp.inf, log_p_s), axis=-1),
    )
    return temperature**2 * (alpha * tckd + beta * nckd)
