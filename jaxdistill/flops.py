"""FLOPs of a program: XLA's cost analysis, checked against a count of its matmuls and convolutions.

XLA's `cost_analysis()` counts every op of the compiled program on the CPU and TPU backends, but
on GPU it leaves the work of library calls (cuBLAS matmuls, cuDNN convolutions) partly or wholly
uncounted. `dot_conv_flops` counts the work that dominates these models from the program's jaxpr,
independently of the backend: 2 x the multiply-adds of every `dot_general` and
`conv_general_dilated` (taps on padding excluded, as XLA excludes them; elementwise ops,
reductions and transcendental functions are not counted). `program_flops` takes XLA's count
unless it falls below that lower bound.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.extend import core

# XLA's count is taken while it is at least this fraction of the matmul + conv count (it
# includes those plus elementwise work, so on a backend that counts everything it is larger)
COMPLETE = 0.9


def xla_flops(stage) -> float:
    """XLA's FLOP count of a `Lowered` or `Compiled` (per device; 0 where unavailable)."""
    try:
        cost = stage.cost_analysis()
    except (NotImplementedError, RuntimeError):  # best effort: not on every backend
        return 0.0
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float((cost or {}).get("flops", 0.0))


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    depth = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * depth


def _valid_taps(size: int, kernel: int, out: int, stride: int, pad_lo: int, lhs_dil: int,
                rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that read an input element
    (not padding, not a hole of the input's dilation)."""
    o = np.arange(out)[:, None]
    i = o * stride - pad_lo + np.arange(kernel)[None, :] * rhs_dil  # in the dilated input
    return int(np.sum((i >= 0) & (i <= (size - 1) * lhs_dil) & (i % lhs_dil == 0)))


def _conv_flops(eqn) -> float:
    # each output element is a dot over the kernel's input features (per group) and the taps
    # of its window that fall on the input: padding is not counted, as XLA does not count it
    p = eqn.params
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    taps = math.prod(
        _valid_taps(lhs[lhs_spec[2 + d]], rhs[rhs_spec[2 + d]], out[out_spec[2 + d]],
                    p["window_strides"][d], p["padding"][d][0], p["lhs_dilation"][d],
                    p["rhs_dilation"][d])
        for d in range(len(lhs_spec) - 2))
    return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps


_COUNTERS = {"dot_general": _dot_flops, "conv_general_dilated": _conv_flops}


def jaxpr_dot_conv_flops(jaxpr) -> float:
    """`dot_conv_flops` of a (Closed)Jaxpr: its own equations and those of its sub-jaxprs
    (a scan's body times its length, a shard_map's body times its shards, the costliest branch
    of a cond, a while loop's body once)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _COUNTERS:
            total += _COUNTERS[name](eqn)
            continue
        inner = [jaxpr_dot_conv_flops(j) for j in core.jaxprs_in_params(eqn.params)]
        if name == "cond":
            total += max(inner, default=0.0)
        elif name == "scan":
            total += eqn.params["length"] * sum(inner)
        elif name == "shard_map":  # the body sees one shard: it runs once per manual shard
            mesh = eqn.params["mesh"]
            manual = eqn.params.get("newly_manual_axes") or mesh.axis_names
            total += math.prod(mesh.shape[a] for a in manual) * sum(inner)
        else:
            total += sum(inner)
    return total


def dot_conv_flops(fn, *args) -> float:
    """2 x the multiply-adds of the matmuls and convolutions `fn(*args)` runs (args may be
    ShapeDtypeStructs); nothing is compiled."""
    return jaxpr_dot_conv_flops(jax.make_jaxpr(fn)(*args))


def program_flops(compiled, counted: float, devices: int = 1) -> tuple[float, str]:
    """(FLOPs of the whole program, their source) for `compiled` running on `devices` devices,
    whose `dot_conv_flops` are `counted`: see `choose_flops`."""
    return choose_flops(xla_flops(compiled) * devices, counted)


def choose_flops(xla: float, counted: float) -> tuple[float, str]:
    """XLA's count of a whole program ('compiled') or, where that is under `COMPLETE` of its
    matmul + conv count `counted` (GPU library calls uncounted), `counted` ('dot_conv')."""
    if xla >= COMPLETE * counted:
        return xla, "compiled"
    return counted, "dot_conv"
