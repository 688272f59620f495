"""Device mesh and sharding rules for the student, the teacher and the batch.

Shardings are derived from abstract shapes (`jax.eval_shape`) and a named rule, so
parameters are created or restored straight into their layout and no full copy ever
sits on one device. Rules:

- ``replicated``: every device holds the whole tensor (plain data parallelism).
- ``fsdp``: each tensor is split along its largest dimension that the FSDP axis divides
  (ZeRO-3 style); tensors with no such dimension stay replicated.
- ``tensor``: weight matrices and conv kernels are split along their output (last)
  dimension over the tensor axis when it divides it (Megatron-style column split).

Mesh axes: ``data`` (always), optionally ``fsdp``, and a tensor axis named ``tensor`` or
``model``. The batch is split over the data-like axes (``data`` and ``fsdp``); the FSDP
rule uses ``fsdp`` when the mesh has it, else ``data``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
TENSOR_AXES = ("tensor", "model")
RULES = ("replicated", "fsdp", "tensor")


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices=None) -> Mesh:
    """Builds a mesh of `shape` over `axes`; one entry of -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {tuple(axes)} "
                         "must have the same length")
    if DATA_AXIS not in axes or not any(a in axes for a in TENSOR_AXES):
        raise ValueError(f"config.mesh.axes {tuple(axes)} must include '{DATA_AXIS}' and a "
                         f"tensor axis ({' or '.join(TENSOR_AXES)})")
    unknown = sorted(set(axes) - {DATA_AXIS, FSDP_AXIS, *TENSOR_AXES})
    if unknown or len(set(axes)) != len(axes):
        raise ValueError(f"config.mesh.axes {tuple(axes)}: each of {DATA_AXIS}, {FSDP_AXIS}, "
                         f"{' / '.join(TENSOR_AXES)} at most once, nothing else")
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


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The data-like mesh axes the batch is split over."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces the batch is split into (the product of the data-like axes)."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data-like axes; the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _spec(shape: tuple[int, ...], rule: str, mesh: Mesh) -> P:
    if rule == "fsdp" and shape:
        axis = FSDP_AXIS if FSDP_AXIS in mesh.axis_names else DATA_AXIS
        size = mesh.shape[axis]
        candidates = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % size == 0]
        if size > 1 and candidates:
            spec = [None] * len(shape)
            spec[int(candidates[0])] = axis
            return P(*spec)
    if rule == "tensor" and len(shape) >= 2:
        axis = next(a for a in TENSOR_AXES if a in mesh.axis_names)
        size = mesh.shape[axis]
        if size > 1 and shape[-1] % size == 0:
            return P(*([None] * (len(shape) - 1)), axis)
    return P()


def tree_shardings(abstract_tree, mesh: Mesh, rule: str):
    """Maps every array leaf of `abstract_tree` to a NamedSharding under `rule`."""
    if rule not in RULES:
        raise ValueError(f"sharding rule '{rule}' is unknown; choose one of {RULES}")
    return jax.tree.map(lambda x: NamedSharding(mesh, _spec(tuple(x.shape), rule, mesh)),
                        abstract_tree)
