"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

As in RepDistiller's ``models/wrn.py``: a bias-free 3x3 stem conv, three stages of
``(depth - 4) / 6`` pre-activation wide basic blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3)
with widths ``(16, 16k, 32k, 64k)``, then BN-ReLU, global average pooling and a linear
classifier. Where a block changes shape, its 1x1 conv shortcut reads the block's pre-activated
input, as in the reference code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.cnn import batch_norm, conv
from jaxdistill.models.registry import check_call, register
from jaxdistill.models.resnet import make_stages


class WideBasicBlock(nnx.Module):
    """Pre-activation wide basic block with optional dropout between its two convolutions."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float, *, dtype: Any,
                 rngs: nnx.Rngs):
        self.bn1 = batch_norm(in_ch, dtype=dtype, rngs=rngs)
        self.conv1 = conv(in_ch, out_ch, 3, stride, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        projects = stride != 1 or in_ch != out_ch
        self.shortcut = conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs) if projects else None

    def __call__(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        a = nnx.relu(self.bn1(x, use_running_average=not train))
        h = nnx.relu(self.bn2(self.conv1(a), use_running_average=not train))
        h = self.conv2(self.dropout(h, deterministic=not train, rngs=rngs))
        return h + (x if self.shortcut is None else self.shortcut(a))


@register("wrn_40_2", depth=40, widen_factor=2)
@register("wrn_40_1", depth=40, widen_factor=1)
@register("wrn_16_2", depth=16, widen_factor=2)
@register("wrn_16_1", depth=16, widen_factor=1)
class WideResNet(nnx.Module):
    """WRN-``depth``-``widen_factor`` (``depth = 6n + 4``); ``dropout`` is the in-block rate.

    Features: ``stem`` (stem conv output), ``stage1``..``stage3`` (block outputs before the
    next pre-activation, NHWC) and ``embedding`` (pooled after the final BN-ReLU,
    ``[B, 64 * widen_factor]``).
    """

    INPUT_KIND = "image"

    def __init__(self, depth: int, widen_factor: int, dropout: float = 0.0, *, num_classes: int,
                 input_shape: tuple[int, int, int], dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"WideResNet dropout must be in [0, 1), got {dropout}")
        self.input_shape = tuple(input_shape)
        self.dropout = dropout
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = conv(self.input_shape[-1], widths[0], 3, dtype=dtype, rngs=rngs)
        self.stages = make_stages(widths, (depth - 4) // 6, lambda i, o, s: WideBasicBlock(
            i, o, s, dropout, dtype=dtype, rngs=rngs))
        self.bn = batch_norm(widths[-1], dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_call(self, x, needs_rngs=train and self.dropout > 0, rngs=rngs)
        h = self.stem(x)
        features = {"stem": h}
        for i, stage in enumerate(self.stages, 1):
            for block in stage:
                h = block(h, train, rngs)
            features[f"stage{i}"] = h
        h = nnx.relu(self.bn(h, use_running_average=not train)).mean(axis=(1, 2))
        features["embedding"] = h
        return self.fc(h).astype(jnp.float32), features
