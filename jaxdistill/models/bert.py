"""A BERT encoder (Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", NAACL 2019), laid out as Hugging Face's ``BertModel``.

Word + learned absolute position + token-type embeddings, summed and LayerNormed; ``depth``
post-LN blocks, each ``x = LN(x + attn(x))`` then ``x = LN(x + W2 gelu(W1 x))`` (exact, erf
GELU); bidirectional multi-head self-attention over the real tokens (``attention_mask`` 1,
padding 0: padding keys get no weight, padding queries are computed and ignored). Every
projection has a bias. No LM head and no pooler: the model returns ``(None, features)``.
Parameters are float32 and carry logical axis names (see ``partitioning``); compute runs in
``dtype``; LayerNorm, softmax and pooling run in at least float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.decoder import _wide, explicit_attention
from jaxdistill.models.partitioning import named_param
from jaxdistill.models.registry import check_call, register

F32 = jnp.float32
_INIT = nnx.initializers.truncated_normal(0.02)  # BERT's initializer_range
_ZEROS, _ONES = nnx.initializers.zeros, nnx.initializers.ones


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, D] mean of ``hidden`` [B, L, D] over the positions where ``mask`` [B, L] is 1
    (sentence-transformers' mean pooling), in at least float32."""
    hidden = hidden.astype(_wide(hidden.dtype))
    mask = mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, in at least
    float32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = named_param(_ONES, rngs.params(), (dim,), ("norm",))
        self.bias = named_param(_ZEROS, rngs.params(), (dim,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        wide = x.astype(_wide(x.dtype))
        mean = jnp.mean(wide, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True)
        y = (wide - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
    """``x @ kernel + bias`` with a ``[*in_shape, *out_shape]`` kernel named ``names``."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 names: tuple[str, ...], *, rngs: nnx.Rngs):
        self.kernel = named_param(_INIT, rngs.params(), (*in_shape, *out_shape), names)
        self.bias = named_param(_ZEROS, rngs.params(), out_shape, names[len(in_shape):])
        self.contract = len(in_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = (tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract)))
        y = jax.lax.dot_general(x, self.kernel[...].astype(x.dtype), (axes, ((), ())))
        return y + self.bias[...].astype(x.dtype)


class Block(nnx.Module):
    """Post-LN encoder block (HF's ``BertLayer``): attention, residual, LN; MLP, residual, LN."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, norm_eps: float, dropout: float,
                 *, rngs: nnx.Rngs):
        head_dim = dim // heads
        self.q, self.k, self.v = (Dense((dim,), (heads, head_dim), ("embed", "heads", "kv"),
                                        rngs=rngs) for _ in range(3))
        self.o = Dense((heads, head_dim), (dim,), ("heads", "kv", "embed"), rngs=rngs)
        self.attn_norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.up = Dense((dim,), (mlp_dim,), ("embed", "mlp"), rngs=rngs)
        self.down = Dense((mlp_dim,), (dim,), ("mlp", "embed"), rngs=rngs)
        self.mlp_norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, mask, *, train: bool, rngs, explicit: bool):
        q, k, v = self.q(x), self.k(x), self.v(x)
        if explicit:
            context, probs = explicit_attention(q, k, v, mask)
        else:
            context, probs = jax.nn.dot_product_attention(q, k, v, mask=mask), None
        drop = lambda y: self.dropout(y, deterministic=not train, rngs=rngs)
        x = self.attn_norm(x + drop(self.o(context)))
        mlp = self.down(jax.nn.gelu(self.up(x), approximate=False))
        return self.mlp_norm(x + drop(mlp)), probs


@register("bert_minilm_l6", dim=384, depth=6, heads=12, mlp_dim=1536)
@register("bert_minilm_l2", dim=384, depth=2, heads=12, mlp_dim=1536)
@register("bert_tiny", dim=32, depth=2, heads=4, mlp_dim=64, max_positions=64)
class Bert(nnx.Module):
    """BERT encoder over ``num_classes`` word pieces and up to ``input_shape[0]`` positions
    (at most ``max_positions``, the size of the position table).

    ``bert_minilm_l6`` is all-MiniLM-L6-v2's shape (load its weights with
    ``jaxdistill.hf``); ``bert_minilm_l2`` a 2-layer student of the same width.

    Features: ``block{i}`` (block i's output ``[B, L, dim]``, i from 1), ``last_hidden`` (the
    last block's output, what transformers calls ``last_hidden_state``), ``embedding`` (its
    mean over the real tokens ``[B, dim]``, float32: the sentence embedding before
    normalisation) and, with ``attention_maps=True``, ``attn{i}`` (float32 attention
    probabilities ``[B, heads, L, L]``).
    """

    INPUT_KIND = "tokens"

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int,
                 max_positions: int = 512, type_vocab_size: int = 2, norm_eps: float = 1e-12,
                 dropout: float = 0.0, *, num_classes: int, input_shape: tuple[int],
                 dtype: Any = F32, rngs: nnx.Rngs):
        for field, value in (("dim", dim), ("depth", depth), ("heads", heads),
                             ("mlp_dim", mlp_dim), ("max_positions", max_positions),
                             ("type_vocab_size", type_vocab_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Bert {field} must be a positive int, got {value!r}")
        if dim % heads:
            raise ValueError(f"Bert dim {dim} must be divisible by heads {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Bert dropout must be in [0, 1), got {dropout}")
        if input_shape[0] > max_positions:
            raise ValueError(f"sequence length {input_shape[0]} (config.data.seq_len) exceeds "
                             f"the model's {max_positions} position embeddings")
        self.input_shape = tuple(input_shape)
        self.dtype, self.dropout_rate = dtype, dropout
        self.word_embeddings = named_param(_INIT, rngs.params(), (num_classes, dim),
                                           ("vocab", "embed"))
        self.position_embeddings = named_param(_INIT, rngs.params(), (max_positions, dim),
                                               ("positions", "embed"))
        self.token_type_embeddings = named_param(_INIT, rngs.params(), (type_vocab_size, dim),
                                                 ("token_types", "embed"))
        self.embed_norm = LayerNorm(dim, norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.blocks = nnx.List([Block(dim, heads, mlp_dim, norm_eps, dropout, rngs=rngs)
                                for _ in range(depth)])

    def __call__(self, inputs: jax.Array, train: bool = False, rngs: nnx.Rngs | None = None, *,
                 attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, attention_maps: bool = False
                 ) -> tuple[None, dict[str, jax.Array]]:
        """``(None, features)`` of word-piece ids ``inputs`` [B, L]; ``attention_mask`` [B, L]
        (default all ones) is 1 on real tokens, 0 on padding; ``token_type_ids`` [B, L]
        (default zeros) pick the segment embedding."""
        check_call(self, inputs, needs_rngs=train and self.dropout_rate > 0, rngs=rngs)
        b, length = inputs.shape
        attention_mask = jnp.ones((b, length), jnp.int32) if attention_mask is None \
            else attention_mask
        token_type_ids = jnp.zeros((b, length), jnp.int32) if token_type_ids is None \
            else token_type_ids
        for field, value in (("attention_mask", attention_mask),
                             ("token_type_ids", token_type_ids)):
            if value.shape != inputs.shape:
                raise ValueError(f"Bert: {field} must have the tokens' shape "
                                 f"{tuple(inputs.shape)}, got {tuple(value.shape)}")
        h = (jnp.take(self.word_embeddings[...], inputs, axis=0)
             + self.position_embeddings[...][:length]
             + jnp.take(self.token_type_embeddings[...], token_type_ids, axis=0))
        h = self.dropout(self.embed_norm(h), deterministic=not train, rngs=rngs).astype(self.dtype)
        mask = jnp.broadcast_to((attention_mask > 0)[:, None, None, :], (b, 1, length, length))
        features = {}
        for i, block in enumerate(self.blocks, 1):
            h, probs = block(h, mask, train=train, rngs=rngs, explicit=attention_maps)
            features[f"block{i}"] = h
            if attention_maps:
                features[f"attn{i}"] = probs
        features["last_hidden"] = h
        features["embedding"] = mean_pool(h, attention_mask)
        return None, features
