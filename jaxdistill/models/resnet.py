"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The variant used across the distillation literature (CRD, Tian et al. ICLR 2020; RepDistiller
and mdistiller ``models/resnet.py``): a 3x3 conv-BN-ReLU stem, three stages of ``(depth - 2) / 6``
post-activation basic blocks (the first block of stages 2 and 3 has stride 2; a 1x1 conv-BN
projection shortcut wherever shape changes), global average pooling and a linear classifier.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.cnn import ConvBN
from jaxdistill.models.registry import check_call, register


def make_stages(widths: Sequence[int], blocks_per_stage: int,
                block: Callable[[int, int, int], nnx.Module]) -> nnx.List:
    """Stages of ``block(in_ch, out_ch, stride)``: stage ``s`` maps to ``widths[s + 1]`` channels
    from ``widths[s]``; the first block of every stage after the first has stride 2."""
    stages = []
    for s, (in_ch, out_ch) in enumerate(itertools.pairwise(widths)):
        stages.append(nnx.List([
            block(out_ch if b else in_ch, out_ch, 2 if s and not b else 1)
            for b in range(blocks_per_stage)
        ]))
    return nnx.List(stages)


class BasicBlock(nnx.Module):
    """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype: Any, rngs: nnx.Rngs):
        self.conv1 = ConvBN(in_ch, out_ch, 3, stride, dtype=dtype, rngs=rngs)
        self.conv2 = ConvBN(out_ch, out_ch, 3, 1, dtype=dtype, rngs=rngs)
        projects = stride != 1 or in_ch != out_ch
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs) if projects else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = self.conv2(nnx.relu(self.conv1(x, train)), train)
        return nnx.relu(h + (x if self.shortcut is None else self.shortcut(x, train)))


@register("resnet20", depth=20, widths=(16, 16, 32, 64))
@register("resnet32", depth=32, widths=(16, 16, 32, 64))
@register("resnet56", depth=56, widths=(16, 16, 32, 64))
@register("resnet110", depth=110, widths=(16, 16, 32, 64))
@register("resnet8x4", depth=8, widths=(32, 64, 128, 256))
@register("resnet32x4", depth=32, widths=(32, 64, 128, 256))
class ResNet(nnx.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers; ``widths`` = (stem, stage1, stage2, stage3).

    Features: ``stem``, ``stage1``..``stage3`` (post-ReLU NHWC maps; stages 2 and 3 halve the
    resolution) and ``embedding`` (globally pooled ``[B, widths[-1]]``).
    """

    INPUT_KIND = "image"

    def __init__(self, depth: int, widths: Sequence[int], *, num_classes: int,
                 input_shape: tuple[int, int, int], dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"ResNet widths must be (stem, stage1, stage2, stage3), got {widths}")
        self.input_shape = tuple(input_shape)
        self.stem = ConvBN(self.input_shape[-1], widths[0], 3, dtype=dtype, rngs=rngs)
        self.stages = make_stages(widths, (depth - 2) // 6, lambda i, o, s: BasicBlock(
            i, o, s, dtype=dtype, rngs=rngs))
        self.fc = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_call(self, x, needs_rngs=False, rngs=rngs)
        h = nnx.relu(self.stem(x, train))
        features = {"stem": h}
        for i, stage in enumerate(self.stages, 1):
            for block in stage:
                h = block(h, train)
            features[f"stage{i}"] = h
        features["embedding"] = h = h.mean(axis=(1, 2))
        return self.fc(h).astype(jnp.float32), features
