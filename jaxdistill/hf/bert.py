"""BERT-style encoders from Hugging Face checkpoints into `jaxdistill.models.bert.Bert`.

`load(hf_config, tensors)` maps the tensors of a ``BertModel`` checkpoint (names as
``save_pretrained`` writes them, with or without a ``bert.`` prefix) onto the NNX model
(through ``hf.load_family``, straight into given shardings):
torch's ``Linear`` weights ``[out, in]`` become ``[in, out]`` kernels, the query/key/value
outputs and the attention output's input are split into ``[heads, head_dim]``, LayerNorm
``weight``/``bias`` become ``scale``/``bias``. The pooler and ``position_ids`` are not used;
a checkpoint with a head (e.g. an MLM head) is refused, naming the tensors. Parameters are
float32 (bfloat16 checkpoints are widened exactly).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxdistill import hf
from jaxdistill.models.bert import Bert

IGNORED = ("position_ids", "pooler.dense.weight", "pooler.dense.bias")  # not used by Bert
_BLOCK = {  # path in a block -> (checkpoint name under encoder.layer.<i>., layout)
    "q.kernel": ("attention.self.query.weight", "split_out"),
    "q.bias": ("attention.self.query.bias", "split_bias"),
    "k.kernel": ("attention.self.key.weight", "split_out"),
    "k.bias": ("attention.self.key.bias", "split_bias"),
    "v.kernel": ("attention.self.value.weight", "split_out"),
    "v.bias": ("attention.self.value.bias", "split_bias"),
    "o.kernel": ("attention.output.dense.weight", "split_in"),
    "o.bias": ("attention.output.dense.bias", "plain"),
    "attn_norm.scale": ("attention.output.LayerNorm.weight", "plain"),
    "attn_norm.bias": ("attention.output.LayerNorm.bias", "plain"),
    "up.kernel": ("intermediate.dense.weight", "transpose"),
    "up.bias": ("intermediate.dense.bias", "plain"),
    "down.kernel": ("output.dense.weight", "transpose"),
    "down.bias": ("output.dense.bias", "plain"),
    "mlp_norm.scale": ("output.LayerNorm.weight", "plain"),
    "mlp_norm.bias": ("output.LayerNorm.bias", "plain"),
}
_EMBEDDINGS = {
    "word_embeddings": "embeddings.word_embeddings.weight",
    "position_embeddings": "embeddings.position_embeddings.weight",
    "token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "embed_norm.scale": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
}


def architecture(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """`Bert` keyword arguments of a BERT config.json (refusing what `Bert` does not
    implement: another activation or relative position embeddings)."""
    if hf_config.get("model_type") != "bert":
        raise ValueError(f"model_type {hf_config.get('model_type')!r} is not 'bert'")
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act {act!r}: only the exact 'gelu' of BERT is implemented")
    position = hf_config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"position_embedding_type {position!r}: only 'absolute' is implemented")
    heads, dim = int(hf_config["num_attention_heads"]), int(hf_config["hidden_size"])
    return {"dim": dim, "depth": int(hf_config["num_hidden_layers"]), "heads": heads,
            "mlp_dim": int(hf_config["intermediate_size"]),
            "max_positions": int(hf_config["max_position_embeddings"]),
            "type_vocab_size": int(hf_config.get("type_vocab_size", 2)),
            "norm_eps": float(hf_config.get("layer_norm_eps", 1e-12))}


def registry_entry(hf_config: dict, *, max_seq_len: int | None = None,
                   where: str = "") -> tuple[str, dict]:
    """(registry name, kwargs) of the `Bert` with the architecture in ``hf_config`` (every
    field given, so any Bert registry name with these kwargs is the same model)."""
    try:
        kwargs = architecture(hf_config)
    except ValueError as e:
        raise ValueError(f"{where or 'bert checkpoint'}: {e}") from None
    if max_seq_len is not None and max_seq_len > kwargs["max_positions"]:
        raise ValueError(f"{where or 'bert checkpoint'}: sequence length {max_seq_len} exceeds "
                         f"max_position_embeddings {kwargs['max_positions']}")
    return "bert_minilm_l6", kwargs


def builder(hf_config: dict, *, dtype: Any, max_seq_len: int | None = None,
            layers: Sequence[int] | None = None):
    """(``make(rngs)`` building the empty `Bert` of ``hf_config`` with the encoder layers
    ``layers`` (default all), info) from config.json alone."""
    kwargs = architecture(hf_config)
    layers = _layers(layers, kwargs["depth"])
    kwargs["depth"] = len(layers)
    length = kwargs["max_positions"] if max_seq_len is None else int(max_seq_len)
    vocab = int(hf_config["vocab_size"])

    def make(rngs):
        return Bert(**kwargs, num_classes=vocab, input_shape=(length,), dtype=dtype, rngs=rngs)
    info = {"family": "bert", "vocab_size": vocab, "hidden_size": kwargs["dim"],
            "layers": layers, "max_seq_len": length, "kwargs": kwargs}
    return make, info


def _layers(layers, depth: int) -> tuple[int, ...]:
    layers = tuple(range(depth)) if layers is None else tuple(int(i) for i in layers)
    if not layers or any(not 0 <= i < depth for i in layers):
        raise ValueError(f"layers {layers} must be indices into the checkpoint's {depth} layers")
    return layers


def _convert(x: np.ndarray, kind: str, heads: int) -> np.ndarray:
    """A checkpoint tensor in the layout of the model parameter (see module doc)."""
    if kind == "transpose":
        return x.T
    if kind == "split_out":  # [heads * head_dim, dim] -> [dim, heads, head_dim]
        return x.T.reshape(x.shape[1], heads, -1)
    if kind == "split_in":   # [dim, heads * head_dim] -> [heads, head_dim, dim]
        return x.T.reshape(heads, -1, x.shape[0])
    if kind == "split_bias":
        return x.reshape(heads, -1)
    return x


def arrays(hf_config: dict, tensors: dict[str, np.ndarray],
           layers: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """{Bert parameter path: array} of a BertModel checkpoint's tensors, keeping the encoder
    layers ``layers`` (default all) in that order (see the module doc)."""
    depth, heads = int(hf_config["num_hidden_layers"]), int(hf_config["num_attention_heads"])
    layers = _layers(layers, depth)
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    pick = hf.Picker(tensors, "bert checkpoint", ignored=IGNORED)
    out = {path: pick(prefix + name) for path, name in _EMBEDDINGS.items()}
    for j, i in enumerate(layers):
        for path, (name, kind) in _BLOCK.items():
            out[f"blocks.{j}.{path}"] = _convert(pick(f"{prefix}encoder.layer.{i}.{name}"), kind,
                                                 heads)
    for i in sorted(set(range(depth)) - set(layers)):  # layers the model does not keep
        for name, _ in _BLOCK.values():
            pick.drop(f"{prefix}encoder.layer.{i}.{name}")
    pick.check_all_used()
    return out


def load(hf_config: dict, tensors: dict[str, np.ndarray], *,
         layers: Sequence[int] | None = None, **kwargs) -> tuple[Bert, dict]:
    """(`Bert`, info) of a BertModel checkpoint (see ``hf.load_family``). layers: the
    checkpoint's encoder layers to keep, in order (default all): e.g. ``(0, 5)`` builds a
    2-layer model from layers 0 and 5, the teacher-layer initialisation of DistilBERT /
    TinyBERT students."""
    return hf.load_family(functools.partial(builder, layers=layers),
                          functools.partial(arrays, layers=layers), hf_config, tensors, **kwargs)
