"""Quantization-aware training of the student through qwix, and its integer weights.

``config.student.quantization`` names a scheme:

- ``'none'``: a float student.
- ``'int8'``: int8 weights and int8 activations in every dense / conv / einsum op. Weights:
  symmetric, per output channel, narrow range [-127, 127] (scale = max|w| / 127); activations:
  asymmetric (min/max with a zero point), per row, computed at run time. This is exactly what
  LiteRT's dynamic-range ("hybrid") kernels compute, so the TFLite export runs the student's own
  integers (`jaxdistill.export`).
- ``'int4_weights'``: int4 weights (symmetric per output channel, qwix's [-7.5, 7.5] grid),
  float activations (weight-only).

Which ops: every dense / conv / einsum op of a classifier. A model that declares its
``KERNELS`` (the decoder LM: its blocks' attention projections q, k, v, o and SwiGLU gate, up,
down) has exactly the products of an activation with one of those weights quantized (W8A8 of
the linear layers, as SmoothQuant and LLM.int8() quantize them); the attention products of two
activations (q k^T, p v), the embedding lookup and the output head (tied: the embedding) stay
float, as GPTQ and AWQ keep the embedding and the head in high precision. The head then runs
the same float product inside ``__call__`` or chunk by chunk outside it (``config.lm.chunk_size``).

Training runs the student through ``qwix.QtProvider`` (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"): the forward pass
quantizes the float latent weights and the activations and multiplies integers; the backward
pass is qwix's straight-through estimator (gradients pass the rounding unchanged, clipped to
the calibration range). The train state keeps the float latent weights, so quantized runs
checkpoint and resume like float ones. ``integer_model`` turns a trained student into its real
integer form (``qwix.PtqProvider``: int8 / int4 arrays + float scales), whose forward pass is
the QAT forward pass exactly.

Rounding ties: an activation exactly halfway between two int8 steps rounds by float error, so
two compiled programs (jit vs eager, XLA vs TFLite) may differ by one step there. The input row
of an image hits ties on every pixel when its grid is offset by half a step (e.g. mean * 255 =
76.5 with pixels 0 and 255 present); an export whose artifact then differs is refused.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from qwix._src.utils.flax_util import find_param  # qwix's own weight lookup (by identity)

from jaxdistill.models.registry import resolved_kwargs

NONE = "none"
SCHEMES = ("none", "int8", "int4_weights")
_FORM = re.compile(r"int(\d+)(_weights)?")
# LiteRT's weight spec: symmetric narrow range [-127, 127]. qwix's absmax maps max|w| to 127.5
# (its +0.5 bucket), so the calibration range is scaled by 127.5 / 127: max|w| lands on 127.
_NARROW_INT8 = f"absmax,{127.5 / 127!r}"


def check_scheme(scheme: str, field: str = "config.student.quantization") -> None:
    """Refuses, in one line naming `field`, a scheme that is not one of `SCHEMES`."""
    if scheme in SCHEMES:
        return
    form = _FORM.fullmatch(str(scheme))
    if form is None:
        raise ValueError(f"{field}={scheme!r} is an unknown quantization scheme; choose one of "
                         f"{', '.join(SCHEMES)}")
    bits, weight_only = int(form.group(1)), bool(form.group(2))
    supported = "4 (int4_weights)" if weight_only else "8 (int8)"
    raise ValueError(f"{field}={scheme!r}: bit width {bits} is not supported "
                     f"{'for weight-only quantization' if weight_only else 'for weights + activations'}"
                     f"; the supported width is {supported}; or 'none'")


def declared_kernels(model_name: str, kwargs=()) -> dict[str, int] | None:
    """The `KERNELS` {parameter name: input axis} the class of registered model `model_name`
    declares (the decoder LM's projections and MLP), or None (its kernels are its dense /
    conv layers' 'kernel')."""
    return getattr(resolved_kwargs(model_name, dict(kwargs))[0], "KERNELS", None)


def check_config(config) -> None:
    """`check_scheme` of config.student.quantization, plus what it cannot be combined with."""
    scheme = config.student.get("quantization", NONE)
    check_scheme(scheme)
    if (scheme != NONE and int(config.lm.chunk_size)
            and declared_kernels(config.student.model, config.student.kwargs) is None):
        raise ValueError("config.student.quantization: a chunked step calls the student's output "
                         "head outside its quantized __call__; set config.lm.chunk_size=0 or "
                         "config.student.quantization='none'")


class QatProvider(qwix.QtProvider):
    """`qwix.QtProvider` that takes the left operand of every dot_general as an activation,
    and, given `kernels` (parameter names), quantizes only the products whose right operand
    is one of those parameters (the rest run in float).

    qwix tells a weight from an activation by identity, then by shape alone: the activation
    [B, d] entering a square d x d layer has its kernel's shape when B = d, and qwix 0.1.8 then
    stops on 'lhs and rhs cannot be both weights'. Every model here multiplies activations by
    weights on the right (x @ W, attention's q @ k^T of two activations, a tied head's h @ E^T).
    The model runs with JAX's jit disabled inside (qwix's `disable_jit`): a jitted wrapper such
    as `jnp.matmul` (`x @ W`) is otherwise traced once per shape and its cached program reused,
    so a second layer of the same shapes (SwiGLU's up after gate, every later block) would skip
    the interception and run in float.
    """

    def __init__(self, rules, kernels=None):
        super().__init__(rules, disable_jit=True)  # see the class doc
        self.kernels = None if kernels is None else frozenset(kernels)

    def _create_dot_general_qt_config(self, rule, op_id, lhs, rhs):
        if self.kernels is not None and find_param(rhs) not in self.kernels:
            rule = dataclasses.replace(rule, weight_qtype=None, act_qtype=None)
        return super()._create_dot_general_qt_config(rule, op_id, _ACTIVATION, rhs)


_ACTIVATION = jax.ShapeDtypeStruct((), jnp.float32)  # matches no parameter, by id or shape


def rules(scheme: str) -> list[qwix.QtRule]:
    """The qwix rules of `scheme` (see the module doc), for every op of the model."""
    check_scheme(scheme)
    if scheme == "int8":
        return [qwix.QtRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8,
                            weight_calibration_method=_NARROW_INT8,
                            act_calibration_method="minmax")]
    if scheme == "int4_weights":
        return [qwix.QtRule(module_path=".*", weight_qtype=jnp.int4)]
    return []


def _sample(input_shape, input_dtype) -> jax.Array:
    return jnp.zeros((1, *input_shape), input_dtype)


def qat_model(model: nnx.Module, scheme: str, input_shape, input_dtype=jnp.float32
              ) -> nnx.Module:
    """`model` (a copy) with its forward pass fake-quantized by `scheme` through
    `qwix.QtProvider`; the model itself for 'none'. Its state is the float model's."""
    if scheme == NONE:
        return model
    return qwix.quantize_model(model, QatProvider(rules(scheme), getattr(model, "KERNELS", None)),
                               _sample(input_shape, input_dtype), train=False)


def qat_factory(make, scheme: str, input_shape, input_dtype=jnp.float32):
    """`make(rngs)` of a model factory, quantized by `scheme` (`qat_model`)."""
    if scheme == NONE:
        return make
    return lambda rngs: qat_model(make(rngs), scheme, input_shape, input_dtype)


def integer_model(model: nnx.Module, scheme: str, input_shape, input_dtype=jnp.float32
                  ) -> nnx.Module:
    """The real integer form of a (QAT or float) `model` with concrete weights: every quantized
    kernel becomes a qwix QArray (int8 / int4 `qvalue` + float `scale`) through
    `qwix.PtqProvider`; its forward pass equals the QAT forward pass."""
    if scheme == NONE:
        raise ValueError("integer_model: scheme 'none' has no integer form")
    if getattr(model, "KERNELS", None) is not None:  # PtqProvider would quantize every product
        raise ValueError(f"integer_model: a {type(model).__name__} student has no integer form "
                         "here (its QAT quantizes its KERNELS only); export takes classifiers")
    return qwix.quantize_model(model, qwix.PtqProvider(rules(scheme)),
                               _sample(input_shape, input_dtype), train=False)


def _path(keys) -> str:
    return "/".join(map(str, keys))


def integer_kernels(int_model: nnx.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{parameter path: (integer values, scale)} of an `integer_model`, as NumPy arrays (the
    scale broadcasts against the values: one per output channel)."""
    flat = dict(nnx.to_flat_state(nnx.state(int_model, nnx.Param)))
    kernels = {}
    for keys, var in flat.items():
        if keys[-2:] == ("array", "qvalue"):
            base = keys[:-2]
            scale = flat[(*base, "array", "scale")]
            kernels[_path(base)] = (np.asarray(var[...]), np.asarray(scale[...]))
    return kernels


def float_model(model: nnx.Module) -> nnx.Module:
    """A copy of a QAT `model` with qwix's interception removed: the plain float model on the
    same variables."""
    plain = nnx.clone(model)
    plain.__class__ = getattr(type(model), "_unquantized_type", type(model))
    return plain


def dequantized_model(model: nnx.Module, scheme: str, input_shape,
                      input_dtype=jnp.float32) -> nnx.Module:
    """The float model whose kernels are the student's integers times their scales
    (`integer_kernels`): what a converter that quantizes weights itself (TFLite's dynamic
    range) is given, so that it recovers exactly those integers."""
    kernels = integer_kernels(integer_model(model, scheme, input_shape, input_dtype))
    plain = float_model(model)
    flat = dict(nnx.to_flat_state(nnx.state(plain, nnx.Param)))
    for keys, var in flat.items():
        if _path(keys) in kernels:
            q, scale = kernels[_path(keys)]
            var[...] = jnp.asarray(q.astype(np.float32) * scale, var[...].dtype)
    nnx.update(plain, nnx.from_flat_state(flat))
    return plain


def kernel_layouts(q: np.ndarray) -> list[np.ndarray]:
    """The layouts a converter may store kernel `q` in: as is, and a dense kernel [in, out]
    as [out, in] / a conv kernel HWIO as OHWI (TFLite's)."""
    layouts = [q]
    if q.ndim == 2:
        layouts.append(q.T)
    elif q.ndim == 4:
        layouts.append(np.transpose(q, (3, 0, 1, 2)))
    return layouts


def missing_kernels(kernels: dict[str, tuple[np.ndarray, Any]],
                    stored: list[np.ndarray]) -> list[str]:
    """The paths of the `kernels` whose integer values appear in none of the `stored` integer
    tensors (in any of their `kernel_layouts`): quantization the conversion dropped."""
    def found(q):
        return any(s.dtype == q.dtype and s.shape == c.shape and np.array_equal(s, c)
                   for s in stored for c in kernel_layouts(q))
    return sorted(path for path, (q, _) in kernels.items() if not found(q))


_CONSTANT = re.compile(r"stablehlo\.constant dense<[^>]*> : tensor<((?:\d+x)+)(i8|i4)>")


def stablehlo_integer_constants(mlir_text: str) -> list[tuple[tuple[int, ...], str]]:
    """(shape, 'int8' | 'int4') of every integer constant tensor of a StableHLO module."""
    return [(tuple(int(d) for d in dims.rstrip("x").split("x")), {"i8": "int8", "i4": "int4"}[t])
            for dims, t in _CONSTANT.findall(mlir_text)]


def missing_constants(kernels: dict[str, tuple[np.ndarray, Any]],
                      constants: list[tuple[tuple[int, ...], str]]) -> list[str]:
    """The paths of the `kernels` with no integer constant of their shape and dtype among
    `constants` (`stablehlo_integer_constants`): kernels that reached the program as floats."""
    return sorted(path for path, (q, _) in kernels.items()
                  if (tuple(q.shape), str(q.dtype)) not in constants)
