"""Auxiliary modules that belong to the objective and train with the student:
feature adapters (FitNets regressors), CRD embedding heads, and the discriminator of
adversarial distillation. Sized from abstract feature shapes (`jax.eval_shape`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class Adapter(nnx.Module):
    """Maps student features of shape `student_shape` onto `teacher_shape` with a learned
    linear map over the last (channel) axis: a 1x1 convolution on NHWC maps, a linear
    regressor on vectors (Romero et al., "FitNets", ICLR 2015). Leading non-batch axes
    (spatial sizes) must already agree."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], *,
                 rngs: nnx.Rngs):
        if tuple(student_shape[1:-1]) != tuple(teacher_shape[1:-1]):
            raise ValueError(f"student feature {tuple(student_shape)} and teacher feature "
                             f"{tuple(teacher_shape)} differ in more than the channel axis")
        self.proj = nnx.Linear(student_shape[-1], teacher_shape[-1], rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x.astype(jnp.float32))


class Embed(nnx.Module):
    """Linear head to `dim` followed by L2 normalisation (CRD's Embed, Tian et al. 2020)."""

    def __init__(self, in_features: int, dim: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(in_features, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.proj(x.reshape(x.shape[0], -1).astype(jnp.float32))
        return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)


class Discriminator(nnx.Module):
    """MLP scoring a [B, D] input as teacher ("real", high score) or student: Linear-ReLU
    per hidden width, then a linear score (after Xu et al. 2018; Wang et al. 2018)."""

    def __init__(self, in_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        sizes = (in_features, *hidden)
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in itertools.pairwise(sizes)])
        self.score = nnx.Linear(sizes[-1], 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        for layer in self.layers:
            h = nnx.relu(layer(h))
        return self.score(h)[:, 0]
