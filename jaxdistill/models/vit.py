"""Vision Transformers for small images (Dosovitskiy et al., "An Image is Worth 16x16 Words",
ICLR 2021), in the DeiT-Tiny/Small sizes (Touvron et al., ICML 2021) with 4x4 patches by default.

Patch embedding by a strided convolution, a learned class token, learned position embeddings,
pre-LayerNorm blocks (multi-head self-attention and a GELU MLP, each with a residual), a final
LayerNorm and a linear classifier on the class token.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.registry import check_call, register


class SelfAttention(nnx.Module):
    """Multi-head self-attention that also returns its float32 attention probabilities."""

    def __init__(self, dim: int, heads: int, *, dtype: Any, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, n, d = x.shape
        head_dim = d // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
        scores = jnp.einsum("bhqc,bhkc->bhqk", q * head_dim**-0.5, k)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bhkc->bqhc", probs.astype(v.dtype), v).reshape(b, n, d)
        return self.proj(out), probs


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with exact GELU."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(dim, heads, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        attended, probs = self.attn(self.norm1(x))
        x = x + attended
        x = x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x)), approximate=False))
        return x, probs


@register("vit_tiny", dim=192, depth=12, heads=3)
@register("vit_small", dim=384, depth=12, heads=6)
class ViT(nnx.Module):
    """ViT on ``patch_size`` x ``patch_size`` patches; ``mlp_dim`` defaults to ``4 * dim``.

    Features: ``block{i}`` (token outputs ``[B, N, dim]`` of block i, i from 1, N = patches + 1),
    ``attention{depth}`` (float32 attention probabilities ``[B, heads, N, N]``, of the last block
    only, to keep memory small) and ``embedding`` (the final-LayerNorm class token ``[B, dim]``).
    """

    INPUT_KIND = "image"

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int | None = None,
                 patch_size: int = 4, *, num_classes: int, input_shape: tuple[int, int, int],
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.input_shape = tuple(input_shape)
        height, width, channels = self.input_shape
        if height % patch_size or width % patch_size:
            raise ValueError(f"ViT patch_size {patch_size} must divide the image size "
                             f"{height}x{width}")
        if dim % heads:
            raise ValueError(f"ViT dim {dim} must be divisible by heads {heads}")
        if depth < 1:
            raise ValueError(f"ViT depth must be >= 1, got {depth}")
        tokens = (height // patch_size) * (width // patch_size) + 1
        self.patch_embed = nnx.Conv(channels, dim, (patch_size, patch_size), strides=patch_size,
                                    padding="VALID", dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, dim), jnp.float32))
        self.pos_embed = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, tokens, dim), jnp.float32))
        mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
        self.blocks = nnx.List([EncoderBlock(dim, heads, mlp_dim, dtype=dtype, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_call(self, x, needs_rngs=False, rngs=rngs)
        h = self.patch_embed(x)
        h = h.reshape(h.shape[0], -1, h.shape[-1])
        cls = jnp.broadcast_to(self.cls_token[...].astype(h.dtype), (h.shape[0], 1, h.shape[-1]))
        h = jnp.concatenate([cls, h], axis=1) + self.pos_embed[...].astype(h.dtype)
        features = {}
        for i, block in enumerate(self.blocks, 1):
            h, probs = block(h)
            features[f"block{i}"] = h
        features[f"attention{len(self.blocks)}"] = probs
        features["embedding"] = h = self.norm(h)[:, 0]
        return self.fc(h).astype(jnp.float32), features
