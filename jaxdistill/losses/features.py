"""Feature- and relation-based distillation losses: FitNets, AT, SP, RKD, PKT.

Pure functions computing in (at least) float32. `hint_loss` and `attention_transfer_loss`
return one value per example; `similarity_preserving_loss`, `rkd_loss` and `pkt_loss` are
batch-level (they compare relations between the examples of a batch) and return a scalar.
Norms use `safe_l2_norm`, so zero features or coinciding embeddings give finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses.logits import _as_float, _check_positive


def safe_l2_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over `axis`; exact value, gradient 0 (not NaN) where the norm is 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||_2, eps) over `axis` (torch.nn.functional.normalize); zero stays zero."""
    return x / jnp.maximum(safe_l2_norm(x, axis=axis, keepdims=True), eps)


def _check_batch(name_s: str, s, name_t: str, t, *, min_batch: int = 1) -> None:
    s_shape, t_shape = jnp.shape(s), jnp.shape(t)
    if len(s_shape) < 1 or len(t_shape) < 1 or s_shape[0] != t_shape[0]:
        raise ValueError(
            f"{name_s} and {name_t} must share the batch size (axis 0), got "
            f"{name_s}.shape={s_shape} and {name_t}.shape={t_shape}"
        )
    if s_shape[0] < min_batch:
        raise ValueError(f"{name_s} needs a batch of at least {min_batch}, got shape {s_shape}")


def _flatten(x) -> jax.Array:
    x = _as_float(x)
    return x.reshape(x.shape[0], -1)


def _smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean smooth-L1 (Huber, delta = 1) over all entries, as torch's F.smooth_l1_loss."""
    d = jnp.abs(x - y)
    return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))


def hint_loss(student_features, teacher_features) -> jax.Array:
    """FitNets hint: per example, mean over all non-batch axes of (s - t)^2.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. Shapes must match exactly
    (a regressor/adapter that maps the student to the teacher shape lives in the objective).
    """
    s_shape, t_shape = jnp.shape(student_features), jnp.shape(teacher_features)
    if s_shape != t_shape or len(s_shape) < 1:
        raise ValueError(
            "student_features and teacher_features must have the same shape (with a batch "
            f"axis), got student_features.shape={s_shape} and teacher_features.shape={t_shape}"
        )
    diff = _flatten(student_features) - _flatten(teacher_features)
    if diff.shape[1] == 0:
        raise ValueError(f"features have no elements per example, shape {s_shape}")
    return jnp.mean(jnp.square(diff), axis=-1)


def attention_map(features, p: float = 2) -> jax.Array:
    """[B, H*W] spatial attention of NHWC features: mean_c |F|^p, flattened, L2-normalised."""
    f = _as_float(features)
    return l2_normalize(jnp.mean(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1))


def _pool_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Adaptive average pooling of one axis to `size` bins, as torch's adaptive_avg_pool:
    bin i averages [floor(i n / size), ceil((i + 1) n / size)) of the n input positions."""
    n = x.shape[axis]
    if n == size:
        return x
    if n % size == 0:  # equal, disjoint bins
        shape = (*x.shape[:axis], size, n // size, *x.shape[axis + 1:])
        return jnp.mean(x.reshape(shape), axis=axis + 1)
    bins = [jnp.mean(jax.lax.slice_in_dim(x, (i * n) // size, -((-(i + 1) * n) // size),
                                          axis=axis), axis=axis, keepdims=True)
            for i in range(size)]
    return jnp.concatenate(bins, axis=axis)


def adaptive_avg_pool(features, size: tuple[int, int]) -> jax.Array:
    """NHWC adaptive average pooling to `size` = (H', W'), H' <= H and W' <= W, with the bins
    of torch's `F.adaptive_avg_pool2d` (overlapping when H is not a multiple of H')."""
    f = _as_float(features)
    if f.ndim != 4 or not (0 < size[0] <= f.shape[1] and 0 < size[1] <= f.shape[2]):
        raise ValueError(f"adaptive_avg_pool takes NHWC features and an output size no larger "
                         f"than theirs, got features.shape={f.shape} and size={tuple(size)}")
    return _pool_axis(_pool_axis(f, 1, size[0]), 2, size[1])


def attention_transfer_loss(student_features, teacher_features, p: float = 2) -> jax.Array:
    """Attention transfer: per example, mean over positions of (a_s - a_t)^2.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, as in the
    RepDistiller `Attention.at_loss` and mdistiller `single_stage_at_loss`: features are NHWC
    with equal batch sizes (the channel counts may differ); a = `attention_map(F, p)`. When the
    spatial sizes differ, the larger *feature map* is first average-pooled to the smaller one's
    (H, W) (`adaptive_avg_pool`), as the reference does (it pools to (H, H) of the smaller map:
    the same for the square maps of CNNs). A map larger in one axis and smaller in the other
    is refused.
    """
    s_shape, t_shape = jnp.shape(student_features), jnp.shape(teacher_features)
    if len(s_shape) != 4 or len(t_shape) != 4 or s_shape[0] != t_shape[0]:
        raise ValueError(
            "student_features and teacher_features must be NHWC with equal batch sizes, got "
            f"student_features.shape={s_shape} and teacher_features.shape={t_shape}"
        )
    _check_positive("p", p)
    s_hw, t_hw = tuple(s_shape[1:3]), tuple(t_shape[1:3])
    if s_hw != t_hw:
        if s_hw[0] >= t_hw[0] and s_hw[1] >= t_hw[1]:
            student_features = adaptive_avg_pool(student_features, t_hw)
        elif s_hw[0] <= t_hw[0] and s_hw[1] <= t_hw[1]:
            teacher_features = adaptive_avg_pool(teacher_features, s_hw)
        else:
            raise ValueError(
                "attention transfer pools the larger feature map to the smaller one, but neither "
                f"is at least as large in both axes: student_features.shape={s_shape} and "
                f"teacher_features.shape={t_shape}"
            )
    diff = attention_map(student_features, p) - attention_map(teacher_features, p)
    return jnp.mean(jnp.square(diff), axis=-1)


def attention_distribution_loss(student_attention, teacher_attention) -> jax.Array:
    """Self-attention distribution transfer for transformers, per query position [B, L].

    Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", NeurIPS 2020: KL(A_t || A_s) between the teacher's and the
    student's attention rows [B, H, L, L] (probabilities over keys), averaged over heads.
    With different head counts the rows are first averaged over each model's heads.
    """
    s, t = _as_float(student_attention), _as_float(teacher_attention)
    if s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(
            "attention maps must be [B, H, L, L] with equal batch and lengths, got "
            f"student_attention.shape={s.shape} and teacher_attention.shape={t.shape}")
    if s.shape[1] != t.shape[1]:
        s, t = jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True)
    tiny = jnp.finfo(s.dtype).tiny
    kl = jnp.sum(jnp.where(t > 0, t * (jnp.log(jnp.maximum(t, tiny))
                                       - jnp.log(jnp.maximum(s, tiny))), 0.0), axis=-1)
    return jnp.mean(kl, axis=1)


def similarity_preserving_loss(student_features, teacher_features) -> jax.Array:
    """Similarity-preserving KD; batch-level, returns a scalar.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019: flatten each
    example, G = F F^T (B x B), L2-normalise each row of G, loss = sum (G_s - G_t)^2 / B^2.
    Feature shapes may differ beyond the batch axis.
    """
    _check_batch("student_features", student_features, "teacher_features", teacher_features)
    f_s, f_t = _flatten(student_features), _flatten(teacher_features)
    g_s, g_t = l2_normalize(f_s @ f_s.T), l2_normalize(f_t @ f_t.T)
    return jnp.sum(jnp.square(g_s - g_t)) / f_s.shape[0] ** 2


def _rkd_distances(e: jax.Array) -> jax.Array:
    """Pairwise distances sqrt(max(||e_i - e_j||^2, 1e-12)) with a zero diagonal, / mean(d > 0)."""
    diff = e[None, :, :] - e[:, None, :]
    d = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), 1e-12))
    d = jnp.where(jnp.eye(e.shape[0], dtype=jnp.bool_), 0.0, d)
    positive = d > 0
    mean = jnp.sum(jnp.where(positive, d, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
    return d / mean


def _rkd_angles(e: jax.Array) -> jax.Array:
    """[B, B, B] cosines <n_ij, n_ik>, n_ij = normalize(e_j - e_i) (a zero difference stays 0)."""
    n = l2_normalize(e[None, :, :] - e[:, None, :])
    return jnp.einsum("ijd,ikd->ijk", n, n)


def rkd_loss(
    student_embeddings,
    teacher_embeddings,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> jax.Array:
    """Relational KD (distance + angle); batch-level, returns a scalar.

    Park et al., "Relational Knowledge Distillation", CVPR 2019, following RepDistiller's
    `RKDLoss`: distances clamped at 1e-12 before the sqrt, diagonal 0, each matrix divided by
    the mean of its positive entries; angles over all B^3 triples; smooth-L1 (delta 1) means.
    The whole teacher side is under stop_gradient. Embeddings are flattened per example and
    may differ in width; needs B >= 2. Memory is O(B^2 D + B^3).
    """
    _check_batch(
        "student_embeddings",
        student_embeddings,
        "teacher_embeddings",
        teacher_embeddings,
        min_batch=2,
    )
    s = _flatten(student_embeddings)
    t = jax.lax.stop_gradient(_flatten(teacher_embeddings))
    loss_d = _smooth_l1(_rkd_distances(s), _rkd_distances(t))
    loss_a = _smooth_l1(_rkd_angles(s), _rkd_angles(t))
    return distance_weight * loss_d + angle_weight * loss_a


def _pkt_probabilities(e: jax.Array, eps: float) -> jax.Array:
    """Row-stochastic [B, B] matrix of cosine similarities mapped to (c + 1) / 2."""
    e = e / (safe_l2_norm(e, axis=-1, keepdims=True) + eps)
    sim = (e @ e.T + 1.0) / 2.0
    return sim / jnp.sum(sim, axis=-1, keepdims=True)


def pkt_loss(student_embeddings, teacher_embeddings, eps: float = 1e-7) -> jax.Array:
    """Probabilistic knowledge transfer; batch-level, returns a scalar.

    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018 (their cosine-kernel code): rows / (||row|| + eps), q = (cos + 1) / 2 normalised
    per row, loss = mean over the B x B entries of q_t log((q_t + eps) / (q_s + eps)).
    """
    _check_batch("student_embeddings", student_embeddings, "teacher_embeddings", teacher_embeddings)
    _check_positive("eps", eps)
    q_s = _pkt_probabilities(_flatten(student_embeddings), eps)
    q_t = _pkt_probabilities(_flatten(teacher_embeddings), eps)
    return jnp.mean(q_t * (jnp.log(q_t + eps) - jnp.log(q_s + eps)))
