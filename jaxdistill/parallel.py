"""Device mesh and sharding rules for the student, the teacher and the batch.

Shardings are derived from abstract shapes (`jax.eval_shape`) and a named rule, so
parameters are created or restored straight into their layout and no full copy ever
sits on one device. Rules:

- ``replicated``: every device holds the whole tensor (plain data parallelism).
- ``fsdp``: each tensor is split along its largest dimension that the FSDP axis divides
  (ZeRO-3 style); tensors with no such dimension stay replicated.
- ``tensor``: weight matrices and conv kernels are split along their output (last)
  dimension over the tensor axis when it divides it (Megatron-style column split).

- ``fsdp_tensor``: both (the tensor split first, then FSDP on the largest other dimension).

Parameters that carry logical axis names (the decoder's: ``vocab``, ``embed``, ``heads``,
``kv_heads``, ``kv``, ``mlp``, ``norm``; see ``jaxdistill.models.partitioning``) are sharded
by name instead, as Flax's lm1b and MaxText do: the rule picks a preset mapping of names to
mesh axes (``LOGICAL_PRESETS``: FSDP splits ``embed``; tensor parallelism splits ``vocab``,
``heads``, ``kv_heads`` and ``mlp``), and ``(name, mesh axis or None)`` pairs in the config
override it. A dimension stays whole where its axis is absent, of size 1, already used by
another dimension of the tensor, or does not divide it. Optimizer state that mirrors the
parameters gets their names by path.

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
RULES = ("replicated", "fsdp", "tensor", "fsdp_tensor")
_FSDP, _TENSOR = "<fsdp>", "<tensor>"  # resolved to the mesh's own axis names
LOGICAL_PRESETS = {
    "replicated": {},
    "fsdp": {"embed": _FSDP},
    "tensor": {"vocab": _TENSOR, "heads": _TENSOR, "kv_heads": _TENSOR, "mlp": _TENSOR},
}
LOGICAL_PRESETS["fsdp_tensor"] = {**LOGICAL_PRESETS["fsdp"], **LOGICAL_PRESETS["tensor"]}


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


def _fsdp_axis(mesh: Mesh) -> str:
    return FSDP_AXIS if FSDP_AXIS in mesh.axis_names else DATA_AXIS


def _tensor_axis(mesh: Mesh) -> str:
    return next(a for a in TENSOR_AXES if a in mesh.axis_names)


def _spec(shape: tuple[int, ...], rule: str, mesh: Mesh) -> P:
    """The shape heuristic of an unnamed tensor (see the module doc)."""
    spec = [None] * len(shape)
    if rule in ("tensor", "fsdp_tensor") and len(shape) >= 2:
        size = mesh.shape[_tensor_axis(mesh)]
        if size > 1 and shape[-1] % size == 0:
            spec[-1] = _tensor_axis(mesh)
    if rule in ("fsdp", "fsdp_tensor") and shape:
        axis = _fsdp_axis(mesh)
        size = mesh.shape[axis]
        candidates = [d for d in np.argsort(shape, kind="stable")[::-1]
                      if shape[d] % size == 0 and spec[d] is None]
        if size > 1 and candidates:
            spec[int(candidates[0])] = axis
    return P(*spec) if any(spec) else P()


def logical_rules(rule: str, overrides, mesh: Mesh, field: str) -> dict[str, str | None]:
    """Logical name -> mesh axis: the rule's preset with the config's `(name, axis)` pairs
    over it; raises a ValueError naming `field` for a malformed pair or an unknown axis."""
    if rule not in RULES:
        raise ValueError(f"sharding rule '{rule}' is unknown; choose one of {RULES}")
    resolve = {_FSDP: _fsdp_axis(mesh), _TENSOR: _tensor_axis(mesh)}
    rules = {name: resolve[axis] for name, axis in LOGICAL_PRESETS[rule].items()}
    for pair in overrides:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"{field}: {pair!r} is not a (logical name, mesh axis) pair, e.g. "
                             "('vocab', 'tensor') or ('embed', None)")
        name, axis = pair
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(f"{field}: ({name!r}, {axis!r}) names a mesh axis that is not in "
                             f"config.mesh.axes {tuple(mesh.axis_names)}")
        rules[name] = axis
    return rules


def _logical_spec(shape: tuple[int, ...], names: tuple, rules: dict, mesh: Mesh) -> P:
    spec, used = [], set()
    for dim, name in zip(shape, names):
        axis = rules.get(name)
        ok = (axis is not None and axis not in used and mesh.shape[axis] > 1
              and dim % mesh.shape[axis] == 0)
        spec.append(axis if ok else None)
        used.add(axis if ok else None)
    return P(*spec) if any(spec) else P()


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry))))


def _path(path) -> tuple[str, ...]:
    keys = tuple(_key(k) for k in path)
    return keys[:-1] if keys and keys[-1] == "value" else keys  # an nnx.Variable's value


def names_by_path(axes_tree) -> dict[tuple[str, ...], tuple]:
    """{parameter path: logical names} of the named leaves of a `logical_axes` tree."""
    leaves = jax.tree_util.tree_flatten_with_path(
        axes_tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {_path(p): names for p, names in leaves if any(n is not None for n in names)}


def _names_for(path: tuple[str, ...], ndim: int, named: dict) -> tuple | None:
    for start in range(len(path)):  # the longest suffix that is a named parameter's path
        names = named.get(path[start:])
        if names is not None and len(names) == ndim:
            return names
    return None


def tree_shardings(abstract_tree, mesh: Mesh, rule: str, named: dict | None = None,
                   overrides=(), field: str = "config.mesh"):
    """Maps every array leaf of `abstract_tree` to a NamedSharding under `rule`: by logical
    name where `named` ({parameter path: names}, see `names_by_path`) names the leaf or a
    path it ends with (optimizer moments), else by the shape heuristic."""
    rules = logical_rules(rule, overrides, mesh, field)
    named = named or {}
    known = sorted({n for names in named.values() for n in names if n is not None})
    for name, axis in overrides:  # a rule for a name no parameter has would do nothing
        if name not in known:
            from jaxdistill.validate import options_hint
            raise ValueError(f"{field}: ({name!r}, {axis!r}): no parameter of the model has the "
                             f"logical axis {name!r}" + (options_hint(name, known, "its axes:")
                                                         if known else "; only the decoder LMs' "
                                                         "parameters carry logical axis names"))

    def sharding(path, x):
        names = _names_for(_path(path), len(x.shape), named) if named else None
        spec = (_logical_spec(tuple(x.shape), names, rules, mesh) if names is not None
                else _spec(tuple(x.shape), rule, mesh))
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(sharding, abstract_tree)
