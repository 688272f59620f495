"""GPT-2 checkpoints as ``models.gpt2.GPT2``.

GPT-2's projections are ``Conv1D`` layers, whose weights are already ``[in, out]``; the fused
``c_attn`` ``[dim, 3 * dim]`` splits into the query, key and value ``[dim, heads, head_dim]``
(in that order) and ``c_proj`` ``[dim, dim]`` becomes ``[heads, head_dim, dim]``. The head is
tied to ``wte``. Names are read with or without the ``transformer.`` prefix (a
GPT2LMHeadModel or a bare GPT2Model); the attention-mask buffers some checkpoints store are
skipped. Refused, in one line: a layer-scaled or unscaled attention, cross-attention, an
untied head and an activation that ``GPT2.ACTIVATIONS`` lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdistill import hf
from jaxdistill.models.gpt2 import ACTIVATIONS

IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights


def registry_entry(hf_config: dict, *, max_seq_len: int | None = None,
                   where: str = "gpt2 checkpoint") -> tuple[str, dict]:
    """(registry name, kwargs) of the GPT2 with the architecture in ``hf_config`` (its
    position table holds all n_positions; ``max_seq_len``, if given, must fit in it)."""
    c = hf_config
    for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                     ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if bool(c.get(flag, ok)) != ok:
            raise ValueError(f"{where}: {flag}={c[flag]} is not supported (only {ok})")
    activation = c.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation_function {activation!r} is not supported; "
                         f"supported: {', '.join(sorted(ACTIVATIONS))}")
    dim, positions = int(c["n_embd"]), int(c["n_positions"])
    if (max_seq_len or positions) > positions:
        raise ValueError(f"{where}: max_seq_len {max_seq_len} exceeds the checkpoint's "
                         f"n_positions {positions}")
    return "gpt2", {"dim": dim, "depth": int(c["n_layer"]), "heads": int(c["n_head"]),
                    "mlp_dim": int(c.get("n_inner") or 4 * dim), "max_seq_len": positions,
                    "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
                    "activation": activation}


def builder(hf_config: dict, *, dtype: Any, max_seq_len: int | None = None,
            where: str = "gpt2 checkpoint"):
    """(``make(rngs)`` building the empty GPT2 of ``hf_config`` for sequences of up to
    ``max_seq_len`` (default: all its positions), info) from config.json alone."""
    name, kwargs = registry_entry(hf_config, max_seq_len=max_seq_len, where=where)
    return hf.registry_builder(name, kwargs, vocab=int(hf_config["vocab_size"]),
                               length=max_seq_len or kwargs["max_seq_len"], dtype=dtype,
                               family="gpt2")


def arrays(hf_config: dict, tensors: dict[str, np.ndarray],
           where: str = "gpt2 checkpoint") -> dict[str, np.ndarray]:
    """{GPT2 parameter path: array} of a checkpoint's tensors (see the module doc)."""
    dim, heads = int(hf_config["n_embd"]), int(hf_config["n_head"])
    head_dim = dim // heads
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""
    pick = hf.Picker(tensors, where, ignored=IGNORED)
    pick.drop("lm_head.weight")  # tied to wte
    out = {"embedding": pick(prefix + "wte.weight"),
           "position_embedding": pick(prefix + "wpe.weight"),
           "norm.scale": pick(prefix + "ln_f.weight"), "norm.bias": pick(prefix + "ln_f.bias")}
    for i in range(int(hf_config["n_layer"])):
        src, dst = f"{prefix}h.{i}.", f"blocks.{i}."
        for ln, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[f"{dst}{norm}.scale"] = pick(f"{src}{ln}.weight")
            out[f"{dst}{norm}.bias"] = pick(f"{src}{ln}.bias")
        qkv = np.split(pick(src + "attn.c_attn.weight"), 3, axis=1)
        qkv_bias = np.split(pick(src + "attn.c_attn.bias"), 3)
        for j, (name, w, b) in enumerate(zip("qkv", qkv, qkv_bias)):
            out[f"{dst}attn.{name}"] = w.reshape(dim, heads, head_dim)
            out[f"{dst}attn.biases.{j}"] = b.reshape(heads, head_dim)
        out[dst + "attn.o"] = pick(src + "attn.c_proj.weight").reshape(heads, head_dim, dim)
        out[dst + "attn.o_bias"] = pick(src + "attn.c_proj.bias")
        out[dst + "mlp.fc"] = pick(src + "mlp.c_fc.weight")
        out[dst + "mlp.fc_bias"] = pick(src + "mlp.c_fc.bias")
        out[dst + "mlp.proj"] = pick(src + "mlp.c_proj.weight")
        out[dst + "mlp.proj_bias"] = pick(src + "mlp.c_proj.bias")
    pick.check_all_used()
    return out


def load(hf_config: dict, tensors: dict[str, np.ndarray], **kwargs) -> tuple[Any, dict]:
    """(GPT2, info) of a GPT-2 checkpoint (see ``hf.load_family``)."""
    return hf.load_family(builder, arrays, hf_config, tensors, **kwargs)
