"""Device mesh and sharding rules for the student, the teacher and the batch.

Shardings are derived from abstract shapes (`jax.eval_shape`) and a named rule, so
parameters are created or restored straight into their layout and no full copy ever
sits on one device. Rules:

- ``replicated``: every device holds the whole tensor (plain data parallelism).
- ``fsdp``: each tensor is split along its largest dimension that the ``data`` axis
  divides (ZeRO-3 style); tensors with no such dimension stay replicated.
- ``tensor``: weight matrices and conv kernels are split along their output (last)
  dimension over the ``model`` axis when it divides it (Megatron-style column split).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
RULES = ("replicated", "fsdp", "tensor")


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices=None) -> Mesh:
    """Builds a mesh of `shape` over `axes`; one entry of -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {tuple(axes)} "
                         "must have the same length")
    for required in (DATA_AXIS, MODEL_AXIS):
        if required not in axes:
            raise ValueError(f"config.mesh.axes {tuple(axes)} must include '{required}'")
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape {tuple(shape)}: at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if known <= 0 or len(devices) % known:
        raise ValueError(f"config.mesh.shape {tuple(shape)} does not divide "
                         f"{len(devices)} devices")
    shape = [len(devices) // known if s == -1 else s for s in shape]
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"config.mesh.shape {tuple(shape)} uses {int(np.prod(shape))} of "
                         f"{len(devices)} devices; use -1 to fill")
    auto = (jax.sharding.AxisType.Auto,) * len(axes)
    return jax.make_mesh(tuple(shape), tuple(axes), axis_types=auto, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _spec(shape: tuple[int, ...], rule: str, mesh: Mesh) -> P:
    if rule == "fsdp" and shape:
        size = mesh.shape[DATA_AXIS]
        candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
        if size > 1 and candidates:
            spec = [None] * len(shape)
            spec[int(candidates[0])] = DATA_AXIS
            return P(*spec)
    if rule == "tensor" and len(shape) >= 2:
        size = mesh.shape[MODEL_AXIS]
        if size > 1 and shape[-1] % size == 0:
            return P(*([None] * (len(shape) - 1)), MODEL_AXIS)
    return P()


def tree_shardings(abstract_tree, mesh: Mesh, rule: str):
    """Maps every array leaf of `abstract_tree` to a NamedSharding under `rule`."""
    if rule not in RULES:
        raise ValueError(f"sharding rule '{rule}' is unknown; choose one of {RULES}")
    return jax.tree.map(lambda x: NamedSharding(mesh, _spec(tuple(x.shape), rule, mesh)),
                        abstract_tree)
