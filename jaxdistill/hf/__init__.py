"""Hugging Face checkpoints as registry models, without torch.

``from_pretrained(path)`` reads a model directory (``config.json`` + ``*.safetensors``, one
file or sharded; float32, float16 or bfloat16) and returns ``(model, info)``: an NNX model
called like every registry model, ``model(tokens) -> (logits, features)`` with
``features['last_hidden']`` the final hidden states (after the final norm), and a dict that
describes it. config.json's ``model_type`` picks the family module (``FAMILIES``), imported
on first use; each exposes ``load(hf_config, tensors, *, dtype, max_seq_len, shardings) ->
(model, info)``, most through ``load_family`` from their ``builder(hf_config, dtype=,
max_seq_len=) -> (make, info)`` and ``arrays(hf_config, tensors) -> {parameter path: array}``;
the decoder families also give ``registry_entry(hf_config, max_seq_len=)``, the registry
name and kwargs a run's ``config.teacher`` uses beside ``hf_checkpoint`` (``check_teacher``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill import parallel
from jaxdistill.hf import files
from jaxdistill.models import build_model
from jaxdistill.models.registry import resolved_kwargs

# config.json model_type -> the module of jaxdistill.hf that loads it
FAMILIES = {"llama": "decoders", "qwen2": "decoders", "mistral": "decoders", "gpt2": "gpt2",
            "bert": "bert"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def family(hf_config: dict, path: str = "") -> Any:
    """The jaxdistill.hf module that loads a checkpoint with config ``hf_config``."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{path or 'config.json'}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(f"jaxdistill.hf.{FAMILIES[model_type]}")


def compute_dtype(dtype) -> Any:
    """``dtype`` ('float32' | 'bfloat16' or a dtype) as a JAX dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is unknown; choose one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return jnp.dtype(dtype)


def fill(abstract, arrays: dict[str, np.ndarray], where: str = "the checkpoint"):
    """``abstract`` (a tree of ShapeDtypeStructs, e.g. an abstract model's nnx.State) with every
    leaf taken from ``arrays`` ({dotted parameter path: host array}, e.g.
    ``'blocks.0.attn.q'``), cast to the leaf's dtype and placed with its sharding (the default
    device where it has none): each device receives only its own shard. Every leaf must be
    given with its shape and every array used."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [".".join(parallel._path(p)) for p, _ in leaves]
    missing = [n for n in names if n not in arrays]
    unused = sorted(set(arrays) - set(names))
    if missing or unused:
        raise ValueError(f"{where} does not fit the model: missing {missing[:3]}, "
                         f"unused {unused[:3]}")
    out = []
    for name, (_, x) in zip(names, leaves):
        value = arrays[name]
        if tuple(value.shape) != tuple(x.shape):
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(x.shape)}")
        out.append(jax.device_put(np.asarray(value, x.dtype), getattr(x, "sharding", None)))
    return jax.tree_util.tree_unflatten(treedef, out)


class Picker:
    """Takes a checkpoint's tensors by name, so that a loader can check at the end that it
    used every one (``ignored``: name endings of buffers that may be left over)."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str, ignored=()):
        self.left, self.where, self.ignored = dict(tensors), where, tuple(ignored)

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise ValueError(f"{self.where}: tensor {name!r} is missing; is the checkpoint "
                             "complete and of this model_type?")
        return self.left.pop(name)

    def drop(self, name: str) -> None:
        self.left.pop(name, None)

    def check_all_used(self) -> None:
        unused = sorted(n for n in self.left if not n.endswith(self.ignored))
        if unused:
            raise ValueError(f"{self.where}: {len(unused)} tensor(s) the model has no place for, "
                             f"e.g. {unused[:3]}")


def assemble(make: Callable[[nnx.Rngs], nnx.Module], arrays: dict[str, np.ndarray], *,
             shardings: Callable | None = None, where: str = "the checkpoint") -> nnx.Module:
    """The model ``make(rngs)`` builds, with its parameters from ``arrays`` (see ``fill``)
    instead of an initialiser: built abstractly (no random init, no full copy), then each
    parameter put on the devices ``shardings(abstract_state)`` names (a tree of Shardings
    like the model's nnx.State; None: the default device)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    if shardings is not None:
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             state, shardings(state))
    return nnx.merge(graphdef, fill(state, arrays, where))


def registry_builder(name: str, kwargs: dict, *, vocab: int, length: int, dtype,
                     family: str) -> tuple[Callable, dict]:
    """(``make(rngs)`` building registry model ``name`` with ``kwargs`` for a vocabulary of
    ``vocab`` and sequences of up to ``length``, info) for a family module's ``builder``."""
    def make(rngs):
        return build_model(name, num_classes=vocab, input_shape=(length,), dtype=dtype,
                           rngs=rngs, **kwargs)
    info = {"family": family, "vocab_size": vocab, "hidden_size": kwargs["dim"],
            "layers": kwargs["depth"], "max_seq_len": length}
    return make, info


def registry_entry(path: str, *, max_seq_len: int | None = None) -> tuple[str, dict]:
    """(registry name, kwargs) of the model in the Hugging Face directory ``path`` (config.json
    alone), for a config's ``teacher.model`` / ``teacher.kwargs`` beside
    ``teacher.hf_checkpoint`` (``max_seq_len``: the run's sequence length)."""
    hf_config = files.read_config(path)
    module = family(hf_config, path)
    if not hasattr(module, "registry_entry"):
        raise ValueError(f"{path}: model_type {hf_config['model_type']!r} has no registry entry "
                         "to derive; name its registry model and kwargs yourself")
    return module.registry_entry(hf_config, max_seq_len=max_seq_len)


def check_teacher(path: str, model: str, kwargs: dict, *, vocab: int, input_shape: tuple,
                  tokenizer: str = "", field: str = "config.teacher.hf_checkpoint") -> None:
    """One-line ValueErrors, from config.json alone, unless the registry model ``model`` with
    ``kwargs``, built for ``vocab`` tokens (the dataset's tokenizer, ``tokenizer``) and
    ``input_shape``, is the checkpoint's architecture: same vocabulary, same class and the
    same value of every field ``registry_entry`` derives (a rotary base or norm epsilon
    that differs leaves the shapes alike, so a shape check alone would miss it)."""
    hf_config = files.read_config(path)
    module = family(hf_config, path)
    stored = int(hf_config.get("vocab_size", vocab))
    if stored != vocab:
        raise ValueError(f"{field}: '{path}' has a vocabulary of {stored} tokens but the "
                         f"dataset's tokenizer {tokenizer!r} has {vocab}; tokenise with the "
                         f"teacher's own: config.data.tokenizer = its tokenizer.json")
    if not hasattr(module, "registry_entry"):
        return  # the family's parameter shapes are all there is to check
    kind = hf_config["model_type"]
    name, wanted = module.registry_entry(hf_config, max_seq_len=input_shape[0],
                                         where=f"{field} ({kind} '{path}')")
    cls_w, want = resolved_kwargs(name, wanted)
    cls_g, got = resolved_kwargs(model, kwargs)
    differ = sorted(k for k in want if k != "max_seq_len" and got.get(k) != want[k])
    if cls_w is not cls_g or differ:
        raise ValueError(
            f"{field}: '{path}' is registry model '{name}' with {wanted}, but the config builds "
            f"'{model}'" + (f" with {', '.join(f'{k}={got.get(k)}' for k in differ)}"
                            if cls_w is cls_g else "")
            + "; set config.teacher.model and kwargs from jaxdistill.hf.registry_entry(path)")


def load_family(builder: Callable, arrays: Callable, hf_config: dict, tensors: dict, *,
                dtype=jnp.float32, max_seq_len: int | None = None,
                shardings: Callable | None = None) -> tuple[nnx.Module, dict]:
    """A family module's ``load``: its ``builder(hf_config, dtype=, max_seq_len=) -> (make,
    info)`` model, filled by ``assemble`` with ``arrays(hf_config, tensors)``."""
    make, info = builder(hf_config, dtype=dtype, max_seq_len=max_seq_len)
    model = assemble(make, arrays(hf_config, tensors), shardings=shardings,
                     where=f"{hf_config['model_type']} checkpoint")
    return model, info


def from_pretrained(path: str, *, dtype="float32", max_seq_len: int | None = None,
                    shardings: Callable | None = None) -> tuple[nnx.Module, dict]:
    """(model, info) of the Hugging Face model directory ``path``.

    Args:
      path: a directory with config.json and model.safetensors (or its sharded index).
      dtype: the compute dtype ('float32' or 'bfloat16'); parameters are float32.
      max_seq_len: the longest sequence the model is built for (default: the checkpoint's
        max_position_embeddings).
      shardings: ``abstract_state -> tree of Shardings`` placing each parameter (None: the
        default device).

    Returns ``info``: family, model_type, vocab_size, hidden_size, layers, dtype, params
    (count) and tokenizer (the directory's tokenizer.json path, or '').
    """
    hf_config = files.read_config(path)
    module = family(hf_config, path)
    dtype = compute_dtype(dtype)
    model, info = module.load(hf_config, files.read_tensors(path), dtype=dtype,
                              max_seq_len=max_seq_len, shardings=shardings)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return model, {**info, "model_type": hf_config["model_type"], "dtype": jnp.dtype(dtype).name,
                   "params": params, "tokenizer": files.tokenizer_path(path)}


__all__ = ["FAMILIES", "Picker", "assemble", "check_teacher", "family", "fill", "from_pretrained", "load_family",
           "registry_builder", "registry_entry"]
