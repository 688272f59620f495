"""Logical axis names on parameters (the Flax lm1b / MaxText convention).

A named parameter carries its names as Flax's ``out_sharding`` Variable metadata with
``eager_sharding=False``: Flax then only records them (no mesh is needed to build the model)
and ``nnx.get_partition_spec`` reads them back as a ``PartitionSpec`` of logical names. Mapping
logical names to mesh axes is the caller's job (rules in the run config).

Names used by the decoder: ``vocab``, ``embed`` (model width), ``heads`` (query heads),
``kv_heads`` (key/value heads), ``kv`` (per-head width), ``mlp`` (MLP hidden width) and
``norm`` (RMSNorm scales, kept apart from ``embed`` so rules can leave them replicated).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def named_param(init: Callable, key: jax.Array, shape: tuple[int, ...],
                names: tuple[str, ...]) -> nnx.Param:
    """A float32 ``nnx.Param`` of ``init(key, shape)`` whose axes are called ``names``."""
    if len(names) != len(shape):
        raise ValueError(f"axis names {names} do not match the shape {shape}")
    return nnx.Param(init(key, shape, jnp.float32), out_sharding=tuple(names),
                     eager_sharding=False)


def logical_axes(state: nnx.State):
    """The logical axis names of every parameter of ``state`` (e.g. from
    ``nnx.split(model, nnx.Param, nnx.BatchStat)``): the same tree with each Variable replaced
    by a tuple of names, one per array axis; axes without a name (every axis of the image
    models' parameters) are None."""

    def names(variable):
        given = variable.get_metadata().get("out_sharding")
        return tuple(given) if given else (None,) * variable.ndim

    return jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
