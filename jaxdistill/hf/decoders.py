"""Llama, Qwen2 and Mistral checkpoints as ``models.decoder.Decoder`` (GQA, rotary
embeddings, SwiGLU, RMSNorm): the three share one layout, Qwen2 adds biases on the query,
key and value projections, Mistral a sliding attention window.

Refused, in one line each (the decoder does not compute them): rotary scaling other than the
default (linear, dynamic, YaRN, Llama 3 ...), partial rotary embeddings, an output bias or an
MLP bias (Llama's ``attention_bias`` / ``mlp_bias``), an activation other than SiLU, and a
sliding window shorter than the sequence the model is built for (within the window, sliding
and full causal attention are the same).

Layouts: HF's linear weights are ``[out, in]``; the decoder's are ``[in, ...]`` with heads as
their own axis (``q``: ``[dim, heads, head_dim]``, ``o``: ``[heads, head_dim, dim]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdistill import hf

SILU = ("silu", "swish")
IGNORED = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved with the weights


def rope_theta(hf_config: dict, where: str) -> float:
    """The rotary base of a checkpoint's config; refuses scaled or partial rotary
    embeddings (``rope_parameters`` in transformers 5, ``rope_theta`` / ``rope_scaling``
    before)."""
    params = hf_config.get("rope_parameters") or {}
    scaling = hf_config.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"{where}: rope type {kind!r} is not supported (only the default "
                         "rotary embedding); use a checkpoint without rope scaling")
    partial = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor {partial} is not supported (only 1.0)")
    return float(params.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))


def _max_seq_len(hf_config: dict, max_seq_len: int | None, where: str) -> int:
    """The length the model is built for: ``max_seq_len``, else the checkpoint's
    max_position_embeddings, capped by a sliding window (which must not be shorter)."""
    positions = int(hf_config.get("max_position_embeddings", 2048))
    window = hf_config.get("sliding_window")
    slides = window is not None and (
        hf_config["model_type"] == "mistral"
        or (hf_config.get("use_sliding_window")
            and "sliding_attention" in (hf_config.get("layer_types") or ("sliding_attention",))))
    length = max_seq_len or (min(positions, int(window)) if slides else positions)
    if length > positions:
        raise ValueError(f"{where}: max_seq_len {length} exceeds the checkpoint's "
                         f"max_position_embeddings {positions}")
    if slides and int(window) < length:
        raise ValueError(f"{where}: sliding_window {window} is shorter than the sequence length "
                         f"{length}; sliding-window attention is not supported, so use a "
                         f"sequence length (config.data.seq_len / max_seq_len) <= {window}")
    return length


def registry_entry(hf_config: dict, *, max_seq_len: int | None = None,
                   where: str = "") -> tuple[str, dict]:
    """(registry name, kwargs) of the Decoder with the architecture in ``hf_config``, built
    for ``max_seq_len`` positions (see ``_max_seq_len``): config.json alone."""
    where = where or f"{hf_config['model_type']} checkpoint"
    c = hf_config
    if c.get("hidden_act", "silu") not in SILU:
        raise ValueError(f"{where}: hidden_act {c['hidden_act']!r} is not supported (only silu)")
    for flag in ("mlp_bias",) + (("attention_bias",) if c["model_type"] != "qwen2" else ()):
        if c.get(flag):
            raise ValueError(f"{where}: {flag}=true is not supported by the decoder")
    heads = int(c["num_attention_heads"])
    return "decoder", {
        "dim": int(c["hidden_size"]), "depth": int(c["num_hidden_layers"]), "heads": heads,
        "kv_heads": int(c.get("num_key_value_heads") or heads),
        "mlp_dim": int(c["intermediate_size"]),
        "head_dim": int(c.get("head_dim") or c["hidden_size"] // heads),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "rope_theta": rope_theta(c, where), "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "qkv_bias": c["model_type"] == "qwen2",
        "max_seq_len": _max_seq_len(c, max_seq_len, where)}


def builder(hf_config: dict, *, dtype: Any, max_seq_len: int | None = None, where: str = ""):
    """(``make(rngs)`` building the empty Decoder of ``hf_config``, info) from config.json
    alone."""
    name, kwargs = registry_entry(hf_config, max_seq_len=max_seq_len, where=where)
    return hf.registry_builder(name, kwargs, vocab=int(hf_config["vocab_size"]),
                               length=kwargs["max_seq_len"], dtype=dtype, family="decoder")


def arrays(hf_config: dict, tensors: dict[str, np.ndarray],
           where: str = "") -> dict[str, np.ndarray]:
    """{Decoder parameter path: array} of a checkpoint's tensors (see the module doc)."""
    where = where or f"{hf_config['model_type']} checkpoint"
    c = hf_config
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
    dim = int(c["hidden_size"])
    pick = hf.Picker(tensors, where, ignored=IGNORED)
    out = {"embedding": pick("model.embed_tokens.weight"),
           "norm.scale": pick("model.norm.weight")}
    if c.get("tie_word_embeddings", False):
        pick.drop("lm_head.weight")  # some tied checkpoints also store the head
    else:
        out["head"] = pick("lm_head.weight").T
    for i in range(int(c["num_hidden_layers"])):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        attn = src + "self_attn."
        out[dst + "attn_norm.scale"] = pick(src + "input_layernorm.weight")
        out[dst + "mlp_norm.scale"] = pick(src + "post_attention_layernorm.weight")
        for name, n in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
            out[f"{dst}attn.{name}"] = pick(f"{attn}{name}_proj.weight").T.reshape(dim, n, head_dim)
        out[dst + "attn.o"] = pick(attn + "o_proj.weight").T.reshape(heads, head_dim, dim)
        if c["model_type"] == "qwen2":
            for j, (name, n) in enumerate((("q", heads), ("k", kv_heads), ("v", kv_heads))):
                out[f"{dst}attn.biases.{j}"] = pick(f"{attn}{name}_proj.bias").reshape(n, head_dim)
        for name in ("gate", "up", "down"):
            out[f"{dst}mlp.{name}"] = pick(f"{src}mlp.{name}_proj.weight").T
    pick.check_all_used()
    return out


def load(hf_config: dict, tensors: dict[str, np.ndarray], **kwargs) -> tuple[Any, dict]:
    """(Decoder, info) of a Llama / Qwen2 / Mistral checkpoint (see ``hf.load_family``)."""
    return hf.load_family(builder, arrays, hf_config, tensors, **kwargs)
