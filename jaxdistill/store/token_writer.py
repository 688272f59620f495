"""The token store's part of `store.writer.write_store`: the teacher's top-k per position.

The teacher runs in eval mode over each eval batch of windows; its final hidden states go
through its output head one chunk of `config.lm.chunk_size` positions at a time (the whole
window when 0), so the writer holds one chunk's [B, c, V] logits, never the window's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdistill.losses.chunked import HIDDEN
from jaxdistill.step import forward, output_head
from jaxdistill.store.dense import topk_entries
from jaxdistill.store.tokens import (
    TOKEN_FORMAT,
    TOKEN_VERSION,
    TokenStoreLayout,
    token_source,
)
from jaxdistill.store.writer import Plan
from jaxdistill.tasks.causal_lm import TOKEN_FIELDS


def top_k_per_position(logits, k: int):
    """(log-probabilities [..., k] largest first, their ids [..., k], log of the mass outside
    them [...]) of logits [..., V], in float32 (the tail from the log-sum-exp of the other
    logits, so it stays exact however small it is; -inf when k = V)."""
    e = topk_entries(logits, k)
    lse = e["logsumexp"]
    return e["values"] - lse[..., None], e["indices"], e["tail_logsumexp"] - lse


def _token_outputs(teacher_def, task, layout: TokenStoreLayout, chunk: int, teacher, batch):
    """The record fields of a batch of windows: `log_probs` (bfloat16 as its uint16 bits, or
    float32), `ids`, `log_tail`, each [B, L, ...]."""
    params, stats = teacher["params"], teacher["batch_stats"]
    inputs = task.inputs(batch, None, train=False)
    _, features, _ = forward(teacher_def, params, stats, inputs.x, train=False, logits=False,
                             **inputs.kwargs)
    hidden = features[HIDDEN]
    b, length, d = hidden.shape
    head = output_head(teacher_def, params, stats)

    def one(h):  # [B, c, D] -> entries of one chunk of positions
        return top_k_per_position(head.apply(head.variables, h), layout.top_k)

    chunks = jnp.swapaxes(hidden.reshape(b, length // chunk, chunk, d), 0, 1)
    log_p, ids, log_tail = jax.tree.map(
        lambda x: jnp.swapaxes(x, 0, 1).reshape(b, length, *x.shape[3:]),
        jax.lax.map(one, chunks))
    if layout.log_prob_dtype == "bfloat16":
        log_p = jax.lax.bitcast_convert_type(log_p.astype(jnp.bfloat16), jnp.uint16)
    return {"log_probs": log_p,
            "ids": ids.astype(layout.dtype["ids"].base),
            "log_tail": log_tail}


def token_plan(config, setup, teacher_abstract, *, top_k: int, features, split: str,
               log_prob_dtype: str | None) -> Plan:
    """The `Plan` of a token store for a causal_lm run's teacher (top_k 0 = all tokens)."""
    if features:
        raise ValueError(f"--features={list(features)}: a token store holds the teacher's "
                         "top-k log-probabilities only; drop --features")
    info, ctx = setup.info, setup.ctx
    vocab = info.num_classes
    if not 0 <= top_k <= vocab:
        raise ValueError(f"--top_k={top_k}: must be in [0, {vocab}] (0 = all tokens)")
    layout = TokenStoreLayout(top_k or vocab, vocab, info.seq_len, log_prob_dtype or "bfloat16")
    chunk = int(config.lm.chunk_size) or info.seq_len
    teacher_sh = jax.tree.map(lambda x: x.sharding, teacher_abstract)
    outputs = jax.jit(functools.partial(_token_outputs, ctx.teacher_def, ctx.task, layout, chunk),
                      in_shardings=(teacher_sh, setup.batch_sharding),
                      out_shardings=setup.batch_sharding)
    meta = {"format": TOKEN_FORMAT, "version": TOKEN_VERSION, "top_k": layout.top_k,
            "vocab_size": vocab, "seq_len": info.seq_len,
            "log_prob_dtype": layout.log_prob_dtype, "bytes_per_token": layout.bytes_per_token}
    return Plan(meta, layout.dtype,
                lambda teacher, batch: outputs(teacher, {k: batch[k] for k in TOKEN_FIELDS}),
                lambda sha: token_source(sha, info, split),
                f"top {layout.top_k} of {vocab} tokens at each of {info.seq_len} positions, "
                f"{layout.log_prob_dtype} log-probabilities, {layout.bytes_per_token:.1f} B/token")
