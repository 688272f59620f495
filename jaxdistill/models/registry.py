"""Model registry and the call contract every registered model meets.

Each model class is registered under one or more names with default keyword arguments::

    @register("resnet20", depth=20, widths=(16, 16, 32, 64))
    class ResNet(nnx.Module): ...

``build_model`` merges the caller's kwargs over those defaults. Every model class declares its
``INPUT_KIND``, which fixes what ``input_shape`` means and what the model is called on:

- ``"image"``: ``input_shape = (H, W, C)``; ``model(x, train=False, rngs=None) -> (logits,
  features)`` with ``x`` float32 NHWC images ``[B, H, W, C]``, ``logits`` float32
  ``[B, num_classes]`` and ``features`` a dict of named intermediates in the compute dtype that
  always holds ``"embedding"``, the ``[B, D]`` vector fed to the classifier.
- ``"tokens"``: ``input_shape = (max_len,)`` and ``num_classes`` is the vocabulary size;
  ``model(tokens, train=False, rngs=None, ...)`` on integer tokens ``[B, L]`` with
  ``L <= max_len`` returns float32 per-position logits ``[B, L, num_classes]`` (see
  ``decoder.Decoder`` for its keyword arguments and features).

Models hold only ``nnx.Param`` and ``nnx.BatchStat`` state (no stored rngs): dropout keys come
from the ``rngs`` argument of the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], dict[str, Any]]] = {}
# Arguments build_model supplies itself; registry defaults and kwargs may not set them.
_RESERVED = ("num_classes", "input_shape", "rngs", "dtype")
INPUT_KINDS = ("image", "tokens")


def register(name: str, **defaults: Any) -> Callable:
    """Class decorator: register ``cls`` as ``name`` with constructor ``defaults``."""

    def decorator(cls):
        if getattr(cls, "INPUT_KIND", None) not in INPUT_KINDS:
            raise ValueError(f"{cls.__name__} must declare INPUT_KIND, one of {INPUT_KINDS}")
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = (cls, defaults)
        return cls

    return decorator


def model_names() -> tuple[str, ...]:
    """All registered model names, sorted."""
    return tuple(sorted(_REGISTRY))


def input_kind(name: str) -> str:
    """What the registered model ``name`` reads: ``"image"`` or ``"tokens"``."""
    return _registered(name)[0].INPUT_KIND


def model_kind(name: str) -> str:
    """What the registered model ``name`` is: ``"image"``, or a token model's ``"decoder"``
    (causal, ``CAUSAL = True``) or ``"encoder"`` (bidirectional); a task's ``model_kind``."""
    cls = _registered(name)[0]
    if cls.INPUT_KIND == "image":
        return "image"
    return "decoder" if getattr(cls, "CAUSAL", False) else "encoder"


def kind_phrase(name: str) -> str:
    """'an image model', 'a decoder model' or 'an encoder model': `name`'s kind, for messages."""
    kind = model_kind(name)
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} model"


def _registered(name: str) -> tuple[Callable[..., nnx.Module], dict[str, Any]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(model_names())}")
    return _REGISTRY[name]


def resolved_kwargs(name: str, kwargs: dict) -> tuple[type, dict[str, Any]]:
    """(class, every constructor argument of it but the reserved ones: its signature's
    defaults, then the registry entry's, then ``kwargs``) of registered model ``name``."""
    cls, defaults = _registered(name)
    params = inspect.signature(cls.__init__).parameters
    own = {k: p.default for k, p in params.items()
           if k not in ("self", *_RESERVED) and p.default is not inspect.Parameter.empty}
    return cls, {**own, **defaults, **kwargs}


def _check_input_shape(name: str, kind: str, input_shape: tuple) -> None:
    rank, form = {"image": (3, "(H, W, C)"), "tokens": (1, "(max_len,)")}[kind]
    if len(input_shape) != rank or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"{name}: input_shape must be {form} positive ints for a model of "
                         f"{kind}, got {input_shape}")


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    **kwargs: Any,
) -> nnx.Module:
    """Builds the registered model ``name``; ``kwargs`` override the registry defaults.

    Args:
      name: a registry name, see ``model_names()``.
      num_classes: number of logits (the vocabulary size of a token model).
      input_shape: the per-example input shape: ``(H, W, C)`` for an image model,
        ``(max_len,)`` for a token model (see ``input_kind``).
      rngs: parameter initialisation randomness; not stored in the model.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
      **kwargs: architecture overrides (e.g. ``depth=2`` for a ViT).

    Raises:
      ValueError: unknown name, bad ``num_classes``/``input_shape``, or an invalid architecture.
      TypeError: a keyword the model does not accept.
    """
    cls, defaults = _registered(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
    input_shape = tuple(input_shape)
    _check_input_shape(name, cls.INPUT_KIND, input_shape)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *_RESERVED}
    bad = sorted(set(kwargs) - accepted)
    if bad:
        raise TypeError(f"{name}: unexpected keyword(s) {bad}; accepted: {sorted(accepted)}")
    try:
        return cls(
            **{**defaults, **kwargs},
            num_classes=num_classes,
            input_shape=input_shape,
            dtype=dtype,
            rngs=rngs,
        )
    except (TypeError, ValueError) as e:  # name the model in architecture errors
        raise (TypeError if isinstance(e, TypeError) else ValueError)(f"{name}: {e}") from e


def check_call(model: nnx.Module, x: jax.Array, *, needs_rngs: bool, rngs: Any) -> None:
    """Fails early (at trace time) on inputs of the wrong shape or missing dropout rngs.

    ``model`` must have ``INPUT_KIND`` and ``input_shape`` attributes: image models take
    ``[B, *input_shape]`` images, token models integer tokens ``[B, L]`` with
    ``L <= input_shape[0]``. ``needs_rngs`` is true when the call will draw dropout masks
    (train mode with a dropout rate above zero).
    """
    name = type(model).__name__
    if model.INPUT_KIND == "tokens":
        (max_len,) = model.input_shape
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer) or x.shape[1] > max_len:
            raise ValueError(f"{name}: expected integer tokens [B, L] with L <= {max_len}, "
                             f"got {x.dtype} shape {tuple(x.shape)}")
    elif x.ndim != 4 or tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{name}: expected images [B, {', '.join(map(str, model.input_shape))}], "
                         f"got shape {tuple(x.shape)}")
    if needs_rngs and rngs is None:
        raise ValueError(f"{name}: train=True with dropout > 0 needs rngs, "
                         "e.g. model(x, train=True, rngs=nnx.Rngs(dropout=key))")
