"""A Llama-style decoder-only language model (Touvron et al., "LLaMA: Open and Efficient
Foundation Language Models", 2023).

Token embedding; ``depth`` pre-RMSNorm blocks, each ``x + attn(norm(x))`` then
``x + mlp(norm(x))``, where attention is grouped-query (Ainslie et al., "GQA", EMNLP 2023)
with rotary position embeddings on queries and keys (Su et al., "RoFormer", 2021; the
rotate-half form: feature ``i`` pairs with ``i + head_dim / 2``) and the MLP is SwiGLU
(Shazeer, "GLU Variants Improve Transformer", 2020); a final RMSNorm and an output head tied to
the embedding or a separate linear one. No biases, except optional ones on the query, key and
value projections (``qkv_bias``, as Qwen2 has).

Attention runs through ``jax.nn.dot_product_attention`` with a causal mask that respects
packing: query ``q`` sees key ``k`` iff ``k <= q`` and both carry the same segment id. Compute
runs in ``dtype``; parameters are float32 and carry logical axis names (see
``partitioning``); logits are float32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.partitioning import named_param
from jaxdistill.models.registry import check_call, register

F32 = jnp.float32


def _wide(dtype) -> jnp.dtype:
    """float32, or ``dtype`` if that is wider (float64 in tests): norms, rotations, softmax and
    logits run in it."""
    return jnp.promote_types(dtype, F32)


def _fan_in(in_axis, out_axis) -> nnx.Initializer:
    return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                             in_axis=in_axis, out_axis=out_axis)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates ``x`` [B, L, N, H] by ``positions`` [B, L]: the pair (``x[i]``,
    ``x[i + H/2]``) turns by the angle ``position * theta ** (-2i / H)``, in at least float32."""
    wide = _wide(x.dtype)
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=wide) / half)
    angle = positions.astype(wide)[:, :, None, None] * freq
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(wide), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, 1, L, L] boolean: query q sees key k iff k <= q and both are in one segment."""
    length = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal & same)[:, None]


def explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                       mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """What ``jax.nn.dot_product_attention`` computes (query head ``n`` reads key/value head
    ``n // (N / K)``), also returning the (at least float32) probabilities [B, N, T, S]."""
    b, t, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    groups = n // kv_heads
    q = q.reshape(b, t, kv_heads, groups, h)
    wide = _wide(q.dtype)
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=wide) * h**-0.5
    scores = jnp.where(mask.reshape(b, 1, 1, t, s), scores, jnp.finfo(wide).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v).reshape(b, t, n, h)
    return out, probs.reshape(b, n, t, s)


def _write(cache: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes ``update`` [B, T, ...] into ``cache`` [B, S, ...] at row-wise offsets ``start``."""
    return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice_in_dim(c, u, i, axis=0))(
        cache, update.astype(cache.dtype), start)


def check_architecture(model: str, sizes: dict[str, Any], dropout: float, remat: bool) -> None:
    """One-line ValueErrors naming ``model`` for a size that is not a positive int, a dropout
    outside [0, 1), or remat with dropout (its recomputation has no dropout keys)."""
    for field, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{model} {field} must be a positive int, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{model} dropout must be in [0, 1), got {dropout}")
    if remat and dropout:
        raise ValueError(f"{model} remat recomputes blocks without their dropout keys; use "
                         "remat=True with dropout=0")


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` over the last axis, in at least float32 (Zhang & Sennrich,
    NeurIPS 2019)."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = named_param(nnx.initializers.ones, rngs.params(), (dim,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        wide = x.astype(_wide(x.dtype))
        y = wide * jax.lax.rsqrt(jnp.mean(wide * wide, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(wide.dtype)).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings; ``heads`` must divide by
    ``kv_heads``."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, rope_theta: float,
                 qkv_bias: bool = False, *, rngs: nnx.Rngs):
        self.rope_theta = rope_theta
        into = _fan_in(0, (1, 2))
        self.q = named_param(into, rngs.params(), (dim, heads, head_dim), ("embed", "heads", "kv"))
        self.k = named_param(into, rngs.params(), (dim, kv_heads, head_dim),
                             ("embed", "kv_heads", "kv"))
        self.v = named_param(into, rngs.params(), (dim, kv_heads, head_dim),
                             ("embed", "kv_heads", "kv"))
        self.o = named_param(_fan_in((0, 1), 2), rngs.params(), (heads, head_dim, dim),
                             ("heads", "kv", "embed"))
        self.biases = nnx.List([
            named_param(nnx.initializers.zeros, rngs.params(), (n, head_dim), (axis, "kv"))
            for n, axis in ((heads, "heads"), (kv_heads, "kv_heads"), (kv_heads, "kv_heads"))]
        ) if qkv_bias else None

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values [B, L, heads | kv_heads, head_dim] before rotation."""
        q, k, v = (jnp.einsum("bld,dnh->blnh", x, w[...].astype(x.dtype))
                   for w in (self.q, self.k, self.v))
        if self.biases is not None:
            q, k, v = (y + b[...].astype(y.dtype) for y, b in zip((q, k, v), self.biases))
        return q, k, v

    def _qkv(self, x: jax.Array, positions: jax.Array):
        q, k, v = self._project(x)
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta), v

    def _out(self, context: jax.Array) -> jax.Array:
        return jnp.einsum("blnh,nhd->bld", context, self.o[...].astype(context.dtype))

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 explicit: bool) -> tuple[jax.Array, jax.Array | None]:
        q, k, v = self._qkv(x, positions)
        if explicit:
            context, probs = explicit_attention(q, k, v, mask)
        else:
            context, probs = jax.nn.dot_product_attention(q, k, v, mask=mask), None
        return self._out(context), probs

    def decode(self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: dict,
               start: jax.Array) -> tuple[jax.Array, dict]:
        q, k, v = self._qkv(x, positions)
        cache = {"k": _write(cache["k"], k, start), "v": _write(cache["v"], v, start)}
        context = jax.nn.dot_product_attention(q, cache["k"].astype(q.dtype),
                                               cache["v"].astype(q.dtype), mask=mask)
        return self._out(context), cache


class SwiGLU(nnx.Module):
    """``down(silu(x @ gate) * (x @ up))``."""

    def __init__(self, dim: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.gate = named_param(_fan_in(0, 1), rngs.params(), (dim, mlp_dim), ("embed", "mlp"))
        self.up = named_param(_fan_in(0, 1), rngs.params(), (dim, mlp_dim), ("embed", "mlp"))
        self.down = named_param(_fan_in(0, 1), rngs.params(), (mlp_dim, dim), ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up, down = (w[...].astype(x.dtype) for w in (self.gate, self.up, self.down))
        return (nnx.silu(x @ gate) * (x @ up)) @ down


class Block(nnx.Module):
    """Pre-norm block: ``x + dropout(attn(norm(x)))``, then ``x + dropout(mlp(norm(x)))``."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, mlp_dim: int,
                 rope_theta: float, norm_eps: float, dropout: float, qkv_bias: bool = False,
                 *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(dim, norm_eps, rngs=rngs)
        self.attn = Attention(dim, heads, kv_heads, head_dim, rope_theta, qkv_bias, rngs=rngs)
        self.mlp_norm = RMSNorm(dim, norm_eps, rngs=rngs)
        self.mlp = SwiGLU(dim, mlp_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, positions, mask, *, train: bool, rngs: nnx.Rngs | None,
                 explicit: bool) -> tuple[jax.Array, jax.Array | None]:
        attended, probs = self.attn(self.attn_norm(x), positions, mask, explicit)
        x = x + self.dropout(attended, deterministic=not train, rngs=rngs)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)), deterministic=not train, rngs=rngs)
        return x, probs

    def decode(self, x, positions, mask, cache: dict, start) -> tuple[jax.Array, dict]:
        attended, cache = self.attn.decode(self.attn_norm(x), positions, mask, cache, start)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), cache


@register("decoder")  # every architecture field from kwargs (e.g. jaxdistill.hf.registry_entry)
@register("lm_tiny", dim=64, depth=2, heads=4, kv_heads=2, mlp_dim=128, max_seq_len=1024)
@register("lm_student", dim=128, depth=2, heads=4, kv_heads=2, mlp_dim=256, max_seq_len=4096)
@register("lm_teacher", dim=256, depth=4, heads=4, kv_heads=2, mlp_dim=384, max_seq_len=4096)
@register("lm_20m", dim=384, depth=6, heads=6, kv_heads=2, mlp_dim=1024, max_seq_len=4096)
@register("lm_small", dim=512, depth=8, heads=8, kv_heads=4, mlp_dim=1408, max_seq_len=4096)
@register("lm_base", dim=768, depth=12, heads=12, kv_heads=4, mlp_dim=2048, max_seq_len=4096)
class Decoder(nnx.Module):
    """Decoder LM over ``num_classes`` tokens and up to ``input_shape[0]`` positions.

    ``head_dim`` defaults to ``dim // heads``; ``tie_embeddings`` computes the logits with the
    transposed embedding (as ``nnx.Embed.attend``), otherwise with a separate
    ``[dim, vocab]`` head; ``dropout`` applies to both residual branches in train mode;
    ``max_seq_len`` (None: any) bounds the sequence length the model is built for;
    ``remat`` recomputes each block in the backward pass of a training call, keeping only
    the blocks' inputs (activation memory of one block instead of all of them);
    ``qkv_bias`` adds learned biases to the query, key and value projections.

    Features: ``block{i}`` (block i's output ``[B, L, dim]``, i from 1), ``hidden`` (the final
    RMS-normed hidden state, what the head reads; also as ``last_hidden``, the name every
    registry token model and ``jaxdistill.hf`` give it) and, with ``attention_maps=True``,
    ``attn{i}`` (float32 attention probabilities ``[B, heads, L, L]``), all in the compute
    dtype except the maps.
    """

    INPUT_KIND = "tokens"
    CAUSAL = True  # registry.model_kind: a decoder (task causal_lm), not an encoder
    # The weights quantization and pruning act on (jaxdistill.quantization, jaxdistill.pruning),
    # by name -> input (fan-in) axis: the blocks' attention projections and SwiGLU MLP. The
    # embedding and the output head stay float and dense, as GPTQ, SparseGPT and Wanda leave them.
    KERNELS: ClassVar[dict[str, int]] = {"q": 0, "k": 0, "v": 0, "o": 1, "gate": 0, "up": 0,
                                         "down": 0}

    def __init__(self, dim: int, depth: int, heads: int, kv_heads: int, mlp_dim: int,
                 head_dim: int | None = None, tie_embeddings: bool = True,
                 rope_theta: float = 10_000.0, norm_eps: float = 1e-5, dropout: float = 0.0,
                 max_seq_len: int | None = None, remat: bool = False, qkv_bias: bool = False, *,
                 num_classes: int, input_shape: tuple[int], dtype: Any = F32, rngs: nnx.Rngs):
        check_architecture("Decoder", {"dim": dim, "depth": depth, "heads": heads,
                                       "kv_heads": kv_heads, "mlp_dim": mlp_dim}, dropout, remat)
        if heads % kv_heads:
            raise ValueError(f"Decoder heads {heads} must be a multiple of kv_heads {kv_heads}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"Decoder dim {dim} must be divisible by heads {heads} "
                                 "(or set head_dim)")
            head_dim = dim // heads
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"Decoder head_dim must be even for rotary embeddings, got {head_dim}")
        if max_seq_len is not None and input_shape[0] > max_seq_len:
            raise ValueError(f"sequence length {input_shape[0]} (config.data.seq_len) exceeds "
                             f"the model's max_seq_len {max_seq_len}; lower it, or raise "
                             "kwargs.max_seq_len where rotary positions extrapolate")
        self.input_shape = tuple(input_shape)
        self.max_len = self.input_shape[0]
        self.vocab_size = num_classes
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype = dtype
        self.dropout = dropout
        self.remat = remat
        self.embedding = named_param(nnx.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                                       out_axis=0),
                                     rngs.params(), (num_classes, dim), ("vocab", "embed"))
        self.blocks = nnx.List([
            Block(dim, heads, kv_heads, head_dim, mlp_dim, rope_theta, norm_eps, dropout,
                  qkv_bias, rngs=rngs) for _ in range(depth)])
        self.norm = RMSNorm(dim, norm_eps, rngs=rngs)
        self.head = None if tie_embeddings else named_param(
            _fan_in(0, 1), rngs.params(), (dim, num_classes), ("embed", "vocab"))

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """The blocks' input of ``tokens`` at ``positions`` (both [B, L]; positions enter
        through the rotary embeddings here, not the input)."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """float32 logits ``[..., vocab]`` of final hidden states ``[..., dim]`` (e.g. a chunk
        of ``features['hidden']``)."""
        hidden = hidden.astype(self.dtype)
        wide = _wide(self.dtype)
        if self.head is None:
            return jnp.einsum("...d,vd->...v", hidden, self.embedding[...].astype(self.dtype),
                              preferred_element_type=wide)
        return jnp.einsum("...d,dv->...v", hidden, self.head[...].astype(self.dtype),
                          preferred_element_type=wide)

    def __call__(self, inputs: jax.Array, train: bool = False, rngs: nnx.Rngs | None = None, *,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 attention_maps: bool = False, logits: bool = True
                 ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """Logits ``[B, L, vocab]`` (None with ``logits=False``) and features of tokens
        ``inputs`` [B, L]. ``segment_ids`` [B, L] (default all ones) separate packed documents
        (0 is padding by convention); ``positions`` [B, L] (default ``arange(L)``) feed the
        rotary embeddings and restart per document."""
        check_call(self, inputs, needs_rngs=train and self.dropout > 0, rngs=rngs)
        b, length = inputs.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (b, length))
        for field, value in (("segment_ids", segment_ids), ("positions", positions)):
            if value.shape != inputs.shape:
                raise ValueError(f"Decoder: {field} must have the tokens' shape "
                                 f"{tuple(inputs.shape)}, got {tuple(value.shape)}")
        mask = attention_mask(segment_ids)
        h = self._embed(inputs, positions)
        features = {}
        for i, block in enumerate(self.blocks, 1):
            if self.remat and train:  # keep each block's input only; recompute the rest
                graphdef, state = nnx.split(block)

                def run(state, h, graphdef=graphdef):
                    return nnx.merge(graphdef, state)(h, positions, mask, train=False, rngs=None,
                                                      explicit=attention_maps)
                h, probs = jax.checkpoint(run)(state, h)
            else:
                h, probs = block(h, positions, mask, train=train, rngs=rngs,
                                 explicit=attention_maps)
            features[f"block{i}"] = h
            if attention_maps:
                features[f"attn{i}"] = probs
        features["hidden"] = features["last_hidden"] = h = self.norm(h)
        return (self.logits_from_hidden(h) if logits else None), features

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> list[dict]:
        """An empty key/value cache for ``max_len`` positions (at most the model's): a list,
        one ``{'k', 'v'}`` dict of ``[batch, max_len, kv_heads, head_dim]`` arrays per block
        (``dtype`` defaults to the compute dtype)."""
        if not 1 <= max_len <= self.max_len:
            raise ValueError(f"Decoder: cache length must be in [1, {self.max_len}], got {max_len}")
        shape = (batch, max_len, self.kv_heads, self.head_dim)
        dtype = self.dtype if dtype is None else dtype
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in self.blocks]

    def decode(self, tokens: jax.Array, cache: list[dict],
               start: jax.Array | int) -> tuple[jax.Array, list[dict]]:
        """Incremental decoding: runs ``tokens`` [B, T] at positions ``start + arange(T)``
        (``start`` a scalar or [B]), attending to the cache's earlier positions; returns their
        float32 logits [B, T, vocab] and the cache with their keys and values written in.
        Prefill is one call on the whole prompt, then one call per new token."""
        b, t = tokens.shape
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Decoder.decode: expected integer tokens, got {tokens.dtype}")
        start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,))
        positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)
        length = cache[0]["k"].shape[1]
        mask = (jnp.arange(length)[None, None, :] <= positions[:, :, None])[:, None]
        h = self._embed(tokens, positions)
        new_cache = []
        for block, layer in zip(self.blocks, cache, strict=True):
            h, layer = block.decode(h, positions, mask, layer, start)
            new_cache.append(layer)
        return self.logits_from_hidden(self.norm(h)), new_cache
