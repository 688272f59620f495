"""BERT-style encoders from Hugging Face checkpoints into `jaxdistill.models.bert.Bert`.

`load(hf_config, tensors)` maps the tensors of a ``BertModel`` checkpoint (names as
``save_pretrained`` writes them, with or without a ``bert.`` prefix) onto the NNX model:
torch's ``Linear`` weights ``[out, in]`` become ``[in, out]`` kernels, the query/key/value
outputs and the attention output's input are split into ``[heads, head_dim]``, LayerNorm
``weight``/``bias`` become ``scale``/``bias``. The pooler, ``position_ids`` and any head
(e.g. an MLM head) are not used and are listed in the info. Parameters are float32 (bfloat16
checkpoints are widened exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models.bert import Bert

ARCHITECTURE = ("dim", "depth", "heads", "mlp_dim", "max_positions", "type_vocab_size",
                "norm_eps")
_BLOCK = {  # model path in a block -> (checkpoint name in encoder.layer.<i>., kind)
    ("q", "kernel"): ("attention.self.query.weight", "split_out"),
    ("q", "bias"): ("attention.self.query.bias", "split_bias"),
    ("k", "kernel"): ("attention.self.key.weight", "split_out"),
    ("k", "bias"): ("attention.self.key.bias", "split_bias"),
    ("v", "kernel"): ("attention.self.value.weight", "split_out"),
    ("v", "bias"): ("attention.self.value.bias", "split_bias"),
    ("o", "kernel"): ("attention.output.dense.weight", "split_in"),
    ("o", "bias"): ("attention.output.dense.bias", "plain"),
    ("attn_norm", "scale"): ("attention.output.LayerNorm.weight", "plain"),
    ("attn_norm", "bias"): ("attention.output.LayerNorm.bias", "plain"),
    ("up", "kernel"): ("intermediate.dense.weight", "transpose"),
    ("up", "bias"): ("intermediate.dense.bias", "plain"),
    ("down", "kernel"): ("output.dense.weight", "transpose"),
    ("down", "bias"): ("output.dense.bias", "plain"),
    ("mlp_norm", "scale"): ("output.LayerNorm.weight", "plain"),
    ("mlp_norm", "bias"): ("output.LayerNorm.bias", "plain"),
}
_EMBEDDINGS = {
    ("word_embeddings",): "embeddings.word_embeddings.weight",
    ("position_embeddings",): "embeddings.position_embeddings.weight",
    ("token_type_embeddings",): "embeddings.token_type_embeddings.weight",
    ("embed_norm", "scale"): "embeddings.LayerNorm.weight",
    ("embed_norm", "bias"): "embeddings.LayerNorm.bias",
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


def _convert(array, kind: str, heads: int) -> np.ndarray:
    """A checkpoint tensor in the layout of the model parameter (see module doc)."""
    x = np.asarray(array, np.float32)
    if kind == "transpose":
        return x.T
    if kind == "split_out":  # [heads * head_dim, dim] -> [dim, heads, head_dim]
        return x.T.reshape(x.shape[1], heads, -1)
    if kind == "split_in":   # [dim, heads * head_dim] -> [heads, head_dim, dim]
        return x.T.reshape(heads, -1, x.shape[0])
    if kind == "split_bias":
        return x.reshape(heads, -1)
    return x


def load(hf_config: Mapping[str, Any], tensors: Mapping[str, Any], *,
         layers: Sequence[int] | None = None, max_len: int | None = None,
         dtype: Any = jnp.float32) -> tuple[Bert, dict[str, Any]]:
    """(`Bert` holding the checkpoint's weights, info) of a BERT config.json and its tensors.

    layers: the checkpoint's encoder layers to keep, in order (default all): e.g. ``(0, 5)``
    builds a 2-layer model from layers 0 and 5, the teacher-layer initialisation of
    DistilBERT / TinyBERT students. max_len: the longest input it is built for (default
    max_position_embeddings). info: ``model`` (the registry class name), ``kwargs`` (its
    architecture), ``vocab_size``, ``layers`` and ``unused`` (checkpoint tensors not loaded).
    """
    kwargs = architecture(hf_config)
    depth = kwargs["depth"]
    layers = tuple(range(depth)) if layers is None else tuple(int(i) for i in layers)
    if not layers or any(not 0 <= i < depth for i in layers):
        raise ValueError(f"layers {layers} must be indices into the checkpoint's {depth} layers")
    kwargs["depth"] = len(layers)
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    vocab = int(hf_config["vocab_size"])
    max_len = kwargs["max_positions"] if max_len is None else int(max_len)
    abstract = nnx.eval_shape(lambda: Bert(**kwargs, num_classes=vocab, input_shape=(max_len,),
                                           dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    used = set()

    def take(name: str, kind: str, shape) -> np.ndarray:
        key = prefix + name
        if key not in tensors:
            raise ValueError(f"checkpoint has no tensor {key!r}")
        value = _convert(tensors[key], kind, kwargs["heads"])
        if value.shape != tuple(shape):
            raise ValueError(f"checkpoint tensor {key!r} has shape {np.shape(tensors[key])}, "
                             f"which does not fit the parameter's {tuple(shape)}")
        used.add(key)
        return value

    def put(tree, path, value):
        for key in path[:-1]:
            tree = tree[key]
        tree[path[-1]] = jnp.asarray(value)

    def get(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    for path, name in _EMBEDDINGS.items():
        put(pure, path, take(name, "plain", get(pure, path).shape))
    for j, i in enumerate(layers):
        for path, (name, kind) in _BLOCK.items():
            full = ("blocks", j, *path)
            put(pure, full, take(f"encoder.layer.{i}.{name}", kind, get(pure, full).shape))
    nnx.replace_by_pure_dict(state, pure)
    model = nnx.merge(graphdef, state)
    info = {"model": "Bert", "kwargs": kwargs, "vocab_size": vocab, "layers": layers,
            "unused": sorted(set(tensors) - used)}
    return model, info
