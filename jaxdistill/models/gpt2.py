"""GPT-2 (Radford et al., "Language Models are Unsupervised Multitask Learners", 2019).

Token plus learned position embeddings; ``depth`` pre-LayerNorm blocks, each
``x + attn(ln(x))`` then ``x + mlp(ln(x))``, with multi-head causal self-attention (biases on
every projection, no rotary embeddings) and a GELU MLP (the tanh approximation, GPT-2's
``gelu_new``); a final LayerNorm and an output head tied to the token embedding.

Built on ``decoder``: the same call convention, packed-document masking, attention (plain or
with maps), KV-cache decoding, output head and logical axis names (plus ``positions`` for the
position table, which no preset shards). Parameters are float32; compute runs in ``dtype``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models import decoder
from jaxdistill.models.partitioning import named_param
from jaxdistill.models.registry import register

_normal = nnx.initializers.normal(0.02)  # GPT-2's initializer_range
_zeros, _ones = nnx.initializers.zeros, nnx.initializers.ones
ACTIVATIONS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}  # -> tanh approx.


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, in at least
    float32 (Ba et al., 2016)."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = named_param(_ones, rngs.params(), (dim,), ("norm",))
        self.bias = named_param(_zeros, rngs.params(), (dim,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        wide = x.astype(decoder._wide(x.dtype))
        centred = wide - jnp.mean(wide, axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)).astype(x.dtype)


class Attention(decoder.Attention):
    """Multi-head self-attention with biased projections and no rotary embeddings."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
        super().__init__(dim, heads, heads, head_dim, rope_theta=0.0, qkv_bias=True, rngs=rngs)
        self.o_bias = named_param(_zeros, rngs.params(), (dim,), ("embed",))

    def _qkv(self, x: jax.Array, positions: jax.Array):
        return self._project(x)

    def _out(self, context: jax.Array) -> jax.Array:
        return super()._out(context) + self.o_bias[...].astype(context.dtype)


class MLP(nnx.Module):
    """``proj(gelu(x @ fc + b_fc)) + b_proj``."""

    def __init__(self, dim: int, mlp_dim: int, tanh: bool, *, rngs: nnx.Rngs):
        self.tanh = tanh
        self.fc = named_param(_normal, rngs.params(), (dim, mlp_dim), ("embed", "mlp"))
        self.fc_bias = named_param(_zeros, rngs.params(), (mlp_dim,), ("mlp",))
        self.proj = named_param(_normal, rngs.params(), (mlp_dim, dim), ("mlp", "embed"))
        self.proj_bias = named_param(_zeros, rngs.params(), (dim,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        fc, fc_b, proj, proj_b = (w[...].astype(x.dtype) for w in
                                  (self.fc, self.fc_bias, self.proj, self.proj_bias))
        return jax.nn.gelu(x @ fc + fc_b, approximate=self.tanh) @ proj + proj_b


class Block(decoder.Block):
    """The decoder's pre-norm block with LayerNorms, GPT-2 attention and a GELU MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, norm_eps: float,
                 tanh: bool, dropout: float, *, rngs: nnx.Rngs):
        self.attn_norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.attn = Attention(dim, heads, head_dim, rngs=rngs)
        self.mlp_norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, tanh, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)


@register("gpt2", dim=768, depth=12, heads=12, mlp_dim=3072, max_seq_len=1024)
class GPT2(decoder.Decoder):
    """GPT-2 LM over ``num_classes`` tokens: ``max_seq_len`` learned positions (at least
    ``input_shape[0]``), ``activation`` one of ``ACTIVATIONS``, ``dropout`` on both residual
    branches in train mode. Called, decoded and featured as ``decoder.Decoder`` (``hidden``
    = ``last_hidden`` is the final LayerNorm's output); positions index the position table
    and restart per packed document."""

    KERNELS: ClassVar[dict[str, int]] = {"q": 0, "k": 0, "v": 0, "o": 1, "fc": 0, "proj": 0}

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, max_seq_len: int,
                 norm_eps: float = 1e-5, activation: str = "gelu_new", dropout: float = 0.0,
                 remat: bool = False, *, num_classes: int, input_shape: tuple[int],
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        decoder.check_architecture("GPT2", {"dim": dim, "depth": depth, "heads": heads,
                                            "mlp_dim": mlp_dim, "max_seq_len": max_seq_len},
                                   dropout, remat)
        if dim % heads:
            raise ValueError(f"GPT2 dim {dim} must be divisible by heads {heads}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GPT2 activation {activation!r} is unknown; choose one of "
                             f"{sorted(ACTIVATIONS)}")
        if input_shape[0] > max_seq_len:
            raise ValueError(f"sequence length {input_shape[0]} (config.data.seq_len) exceeds "
                             f"the model's {max_seq_len} learned positions (max_seq_len)")
        self.input_shape = tuple(input_shape)
        self.max_len = self.input_shape[0]
        self.vocab_size = num_classes
        self.kv_heads, self.head_dim = heads, dim // heads
        self.dtype, self.dropout, self.remat = dtype, dropout, remat
        self.embedding = named_param(_normal, rngs.params(), (num_classes, dim), ("vocab", "embed"))
        self.position_embedding = named_param(nnx.initializers.normal(0.01), rngs.params(),
                                              (max_seq_len, dim), ("positions", "embed"))
        self.blocks = nnx.List([
            Block(dim, heads, dim // heads, mlp_dim, norm_eps, ACTIVATIONS[activation], dropout,
                  rngs=rngs) for _ in range(depth)])
        self.norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.head = None  # tied to the token embedding

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """Token plus position embeddings of ``tokens`` at ``positions`` [B, L]."""
        return (jnp.take(self.embedding[...], tokens, axis=0)
                + jnp.take(self.position_embedding[...], positions, axis=0)).astype(self.dtype)
