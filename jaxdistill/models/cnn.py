"""Convolution building blocks shared by the conv nets, and a small CNN.

Convolutions use He/Kaiming normal init in ``fan_out`` mode and PyTorch-style symmetric
``k // 2`` padding, as in the CIFAR ResNet / WRN code the distillation literature builds on
(He et al., "Delving Deep into Rectifiers", ICCV 2015). BatchNorm uses momentum 0.9 (PyTorch's
0.1) and keeps its running statistics as ``nnx.BatchStat``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.registry import check_call, register

he_normal = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, dtype: Any,
         rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free ``kernel x kernel`` convolution with He init and ``kernel // 2`` padding."""
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=kernel // 2,
                    use_bias=False, kernel_init=he_normal, dtype=dtype, rngs=rngs)


def batch_norm(channels: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm over the channel axis with PyTorch's default momentum and epsilon."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class ConvBN(nnx.Module):
    """Convolution followed by BatchNorm (no activation)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, *, dtype: Any,
                 rngs: nnx.Rngs):
        self.conv = conv(in_ch, out_ch, kernel, stride, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(out_ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


@register("cnn")
class CNN(nnx.Module):
    """Small CNN: ``len(widths)`` stages of 3x3 conv-BN-ReLU and 2x2 max pool, then a ReLU
    dense layer of ``hidden`` units (the embedding) and a linear classifier.

    Features: ``stage{i}`` (pooled NHWC maps, i from 1) and ``embedding`` ``[B, hidden]``.
    """

    INPUT_KIND = "image"

    def __init__(self, widths: tuple[int, ...] = (32, 64), hidden: int = 128, *,
                 num_classes: int, input_shape: tuple[int, int, int], dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if not widths:
            raise ValueError("CNN needs at least one stage width")
        self.input_shape = tuple(input_shape)
        height, width, channels = self.input_shape
        scale = 2 ** len(widths)
        if height < scale or width < scale:
            raise ValueError(f"{len(widths)} 2x2 poolings need images of at least {scale}x{scale}, "
                             f"got {height}x{width}")
        ins = (channels, *widths[:-1])
        self.stages = nnx.List([ConvBN(i, o, dtype=dtype, rngs=rngs) for i, o in zip(ins, widths)])
        flat = (height // scale) * (width // scale) * widths[-1]
        self.dense = nnx.Linear(flat, hidden, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_call(self, x, needs_rngs=False, rngs=rngs)
        features = {}
        h = x
        for i, stage in enumerate(self.stages, 1):
            h = nnx.max_pool(nnx.relu(stage(h, train)), (2, 2), strides=(2, 2))
            features[f"stage{i}"] = h
        h = nnx.relu(self.dense(h.reshape(h.shape[0], -1)))
        features["embedding"] = h
        return self.fc(h).astype(jnp.float32), features
