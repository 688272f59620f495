"""Export a run's trained student for inference outside JAX (StableHLO, TFLite); and a CLI.

    python -m jaxdistill.export --workdir=DIR --format=stablehlo|tflite|onnx --out=FILE \\
        [--batch=1|dynamic] [--verify_batches=3]

The artifact takes what a deployed classifier is given, the dataset's raw images, uint8
``[B, H, W, C]``, applies the run's preprocessing inside (``/ 255``, then
``(x - config.data.mean) / config.data.std``) and returns float32 logits
``[B, num_classes]``. ``--batch=1`` fixes B = 1; ``--batch=dynamic`` leaves it symbolic (any
B >= 1). The student is the one the run finished with: the newest checkpoint of the workdir,
which must be the final step that ``summary.json`` records, with the parameter digest it
records (for the demo's workdir: the distilled student). The weights are constants inside
the artifact.

- ``stablehlo``: ``jax.export`` for the CPU platform, the bytes of ``Exported.serialize()``;
  run with ``jax.export.deserialize(bytearray(open(FILE, 'rb').read())).call(images)``.
- ``tflite`` (the ``tf`` extra): jax2tf (native serialization, its only mode now: the
  StableHLO module inside one ``XlaCallModule`` op) as a ``tf.function``, converted by
  ``tf.lite.TFLiteConverter`` to TFLite builtin ops only, float32 weights; run with
  LiteRT (``ai_edge_litert``, the ``export`` extra) or ``tf.lite.Interpreter``.
- ``onnx``: refused (see ``ONNX_UNSUPPORTED``).

A quantized student (``config.student.quantization``, `jaxdistill.quantization`) is exported
with its real integer kernels, not fake-quant floats. StableHLO: its integer form (int8 / int4
constants, int8 x int8 -> int32 matmuls, qwix's own inference program). TFLite (``int8``
only): dynamic-range quantization, i.e. int8 kernels with per-channel scales, activations
quantized per row at run time by the hybrid kernels, float32 in and out (not full-integer).
The converter is given the float model on the student's dequantized integers and recovers
exactly those integers; the artifact is refused unless every kernel of the student is found in
it, integer for integer (``check_integer_kernels``), and its check runs TFLite's builtin
kernels (the default XNNPACK delegate rounds ``x / scale`` by a reciprocal and can land an
activation one int8 step away, ~1e-3 of the logits, on a rare example).

Before FILE is written, the artifact runs in its own runtime on the first ``verify_batches``
eval batches of the run's eval split (batch 1: one image per call; dynamic: the eval batches
plus batches of 1 and 7 images) and its logits are compared with the JAX student's, computed
as the run's eval computes them (host ``/ 255``, the task's normalisation, the model in eval
mode). An artifact off by more than ``TOLERANCE[format] * max(1, max |logit|)`` is refused
and not written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdistill import checkpoint, data, quantization
from jaxdistill.generate import read_config
from jaxdistill.models import build_model
from jaxdistill.step import forward
from jaxdistill.tasks import task_class

FORMATS = ("stablehlo", "tflite", "onnx")
BATCHES = ("1", "dynamic")
SUMMARY = "summary.json"
# Max |artifact logit - JAX logit| allowed, relative to max(1, max |JAX logit|). StableHLO
# is compiled by the same XLA on the same CPU: bit-equal in practice, a few ulps allowed.
# TFLite runs other kernels (XNNPACK's GEMM / conv) with another summation order and fused
# ops: float32 rounding differences that grow with the reduction length (~sqrt(K) * 6e-8
# relative); 1e-4 is ~1,000 ulps, far below what a wrong weight, a missing normalisation
# or a lost layer gives (>= 1e-2).
TOLERANCE = {"stablehlo": 1e-5, "tflite": 1e-4}
DYNAMIC_EXTRA_BATCHES = (1, 7)  # odd sizes a dynamic artifact is also run at
ONNX_UNSUPPORTED = (
    "--format=onnx is not supported: jax2onnx, the JAX -> ONNX exporter, requires "
    "orbax-checkpoint<0.11.37 in every release up to 0.17.1 and would downgrade this project's "
    "orbax-checkpoint 0.12; use --format=stablehlo or --format=tflite")
TF_MISSING = ("--format=tflite needs TensorFlow (jax2tf and the TFLite converter): install the "
              "tf extra, pip install -e '.[tf]'")
_BUILTIN_EXCLUDED = ("CUSTOM", "DELEGATE")  # + every 'Flex*' (TF kernels): not edge-runnable

__all__ = ["BATCHES", "FORMATS", "TOLERANCE", "ExportResult", "Student", "Verification",
           "check_integer_kernels", "export", "load_student", "run_stablehlo", "run_tflite",
           "stablehlo_runner", "tflite_integer_tensors", "tflite_ops", "tflite_runner",
           "to_stablehlo", "to_tflite", "verify"]


# ---------------------------------------------------------------------------- the student

@dataclasses.dataclass(frozen=True)
class Student:
    """A finished classification run's final student, restored onto the first device."""

    workdir: str
    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    task: Any
    graphdef: nnx.GraphDef
    params: Any
    batch_stats: Any
    step: int
    params_sha256: str
    quantization: str = quantization.NONE  # config.student.quantization of the run

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.info.image_shape)

    @property
    def num_classes(self) -> int:
        return int(self.config.student.get("num_classes", 0) or self.info.num_classes)

    def model(self) -> nnx.Module:
        """The student as it was trained (a quantized run's: fake-quantized by qwix)."""
        return nnx.merge(self.graphdef, self.params, self.batch_stats, copy=True)

    def deployed_model(self, fmt: str) -> nnx.Module:
        """The model `fmt` exports: the student itself, or for a quantized run its integer
        form (StableHLO: int8 / int4 kernels and integer matmuls, `quantization.integer_model`)
        or the float model on its dequantized integers, which TFLite's dynamic-range
        quantizer turns back into exactly those int8 kernels (`dequantized_model`)."""
        if self.quantization == quantization.NONE:
            return self.model()
        build = (quantization.integer_model if fmt == "stablehlo"
                 else quantization.dequantized_model)
        return build(self.model(), self.quantization, self.image_shape)

    def integer_kernels(self) -> dict:
        """{path: (integer values, scale)} of a quantized student's kernels."""
        return quantization.integer_kernels(quantization.integer_model(
            self.model(), self.quantization, self.image_shape))

    def serving_function(self, model: nnx.Module | None = None):
        """uint8 images [B, H, W, C] -> float32 logits [B, num_classes] of `model` (default:
        the student), preprocessing inside; the weights are closed over (constants of an
        exported program)."""
        graphdef, params, stats = nnx.split(model or self.model(), nnx.Param, nnx.BatchStat)
        task = self.task

        def serve(images):
            x = images.astype(jnp.float32) / 255.0
            x = task.inputs({"image": x}, None, train=False).x
            return forward(graphdef, params, stats, x, train=False)[0].astype(jnp.float32)
        return serve

    def reference_logits(self, images: np.ndarray) -> np.ndarray:
        """The JAX student's logits for uint8 `images`, computed as the run's eval computes
        them: `/ 255` on the host (the readers' `sampling.make_batch`), the task's
        normalisation and the model in eval mode, in eval batches."""
        @jax.jit
        def logits(variables, x):
            x = self.task.inputs({"image": x}, None, train=False).x
            return forward(self.graphdef, variables["params"], variables["batch_stats"], x,
                           train=False)[0]
        variables = {"params": self.params, "batch_stats": self.batch_stats}
        size = int(self.config.eval_batch_size)
        return np.concatenate([
            np.asarray(logits(variables, np.asarray(images[i:i + size], np.float32) / 255.0),
                       np.float32)
            for i in range(0, len(images), size)])

    def eval_examples(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `count` examples of the eval split, raw: uint8 images, int labels."""
        split = self.config.data.eval_split
        count = min(int(count), int(self.info.splits[split]))
        source = data.source.tfds_builder(self.info.tfds_name,
                                          self.info.data_dir).as_data_source(split)
        examples = source.__getitems__(list(range(count)))
        images = np.array([e["image"] for e in examples], np.uint8).reshape(-1, *self.image_shape)
        return images, np.array([e["label"] for e in examples], np.int64)


def _finished_summary(workdir: str, config) -> dict:
    path = os.path.join(workdir, SUMMARY)
    try:
        with open(path) as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--workdir={workdir} is not a finished run: it has no {SUMMARY} (a "
                         "run writes it when it ends); rerun its training command to finish "
                         "it") from None
    except ValueError as e:
        raise ValueError(f"--workdir={workdir}: its {SUMMARY} is not valid JSON ({e})") from None
    steps = summary.get("steps")
    if steps != config.num_steps or "student_params_sha256" not in summary:
        raise ValueError(f"--workdir={workdir} is not a finished run: {SUMMARY} records step "
                         f"{steps} of config.num_steps={config.num_steps}; rerun its training "
                         "command to finish it")
    return summary


def _newest_step(workdir: str) -> int:
    directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    steps = ([int(n) for n in os.listdir(directory) if n.isdigit()]
             if os.path.isdir(directory) else [])
    if not steps:
        raise ValueError(f"--workdir={workdir} is not a finished run: it has no checkpoint in "
                         f"{directory}")
    return max(steps)


def check_exportable(config, workdir: str) -> None:
    """Refuses, in one line, a run whose student this module cannot export faithfully."""
    if config.get("task", "classification") != "classification":
        raise ValueError(f"--workdir={workdir} is a '{config.task}' run: export is not "
                         "supported yet for that task (classification students only)")


def load_student(workdir: str) -> Student:
    """The final student of the finished classification run in `workdir` (see module doc):
    its config.json, summary.json and newest checkpoint, whose step and parameter digest
    must be the summary's."""
    if not workdir:
        raise ValueError("--workdir is empty; give the workdir of a finished training run")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir}: no such directory; give the workdir of a "
                         "finished training run")
    config = read_config(workdir)
    check_exportable(config, workdir)
    summary = _finished_summary(workdir, config)
    step = _newest_step(workdir)
    if step != summary["steps"]:
        raise ValueError(f"--workdir={workdir}: its newest checkpoint is step {step}, not the "
                         f"final step {summary['steps']} of {SUMMARY}; the run was resumed "
                         "and has not finished: rerun its training command to finish it")
    task = task_class(config.task)(config)
    info = data.prepare_from_config(config.data)
    student_cfg = config.student
    scheme = student_cfg.get("quantization", quantization.NONE)
    abstract = nnx.eval_shape(lambda: quantization.qat_model(build_model(
        student_cfg.model, num_classes=int(student_cfg.get("num_classes", 0) or info.num_classes),
        input_shape=tuple(info.image_shape), rngs=nnx.Rngs(0),
        dtype=jnp.dtype(student_cfg.get("dtype", "float32")),
        **dict(student_cfg.get("kwargs", {}))), scheme, tuple(info.image_shape)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          {"params": params, "batch_stats": stats})
    restored = checkpoint.load_teacher(workdir, placed, field="--workdir")
    digest = checkpoint.params_sha256(restored["params"])
    if digest != summary["student_params_sha256"]:
        raise ValueError(f"--workdir={workdir}: the parameters of its newest checkpoint (step "
                         f"{step}, sha256 {digest[:12]}) are not the student {SUMMARY} records "
                         f"({summary['student_params_sha256'][:12]}); rerun its training "
                         "command to finish it")
    return Student(workdir, config, info, task, graphdef, restored["params"],
                   restored["batch_stats"], step, digest, scheme)


# ---------------------------------------------------------------------------- the formats

def _input_shape(student: Student, batch: str) -> tuple:
    if batch == "1":
        return (1, *student.image_shape)
    return (*jax.export.symbolic_shape("b"), *student.image_shape)


def _serving(student: Student, fmt: str):
    """The serving function of what `fmt` exports (`Student.deployed_model`)."""
    if student.quantization == quantization.NONE:
        return student.serving_function()
    return student.serving_function(student.deployed_model(fmt))


def to_stablehlo(student: Student, batch: str = "1") -> bytes:
    """The serialized `jax.export.Exported` of the serving function, for CPU."""
    exported = jax.export.export(jax.jit(_serving(student, "stablehlo")), platforms=("cpu",))(
        jax.ShapeDtypeStruct(_input_shape(student, batch), jnp.uint8))
    return bytes(exported.serialize())


def stablehlo_runner(artifact: bytes):
    """(runtime name, images -> logits) of a serialized `jax.export` artifact, on the CPU."""
    call = jax.jit(jax.export.deserialize(bytearray(artifact)).call)
    cpu = jax.devices("cpu")[0]
    return "jax.export.deserialize", lambda x: np.asarray(call(jax.device_put(x, cpu)))


def run_stablehlo(artifact: bytes, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Runs a serialized StableHLO artifact (`jax.export.deserialize`) on each batch."""
    run = stablehlo_runner(artifact)[1]
    return [run(b) for b in batches]


def _tensorflow():
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError:
        raise ValueError(TF_MISSING) from None
    return tf, jax2tf


def to_tflite(student: Student, batch: str = "1") -> bytes:
    """A TFLite flatbuffer of the serving function: jax2tf -> tf.function ->
    `tf.lite.TFLiteConverter`, TFLite builtin ops only; float32 weights, or for an int8
    student dynamic-range quantization (int8 kernels, activations quantized at run time)."""
    tf, jax2tf = _tensorflow()
    if student.quantization not in (quantization.NONE, "int8"):
        raise ValueError(f"--format=tflite: a '{student.quantization}' student has no TFLite "
                         "form here (TFLite's converter stores int8 kernels only); use "
                         "--format=stablehlo, which keeps its integer kernels")
    h, w, c = student.image_shape
    poly = None if batch == "1" else [f"(b, {h}, {w}, {c})"]
    converted = jax2tf.convert(_serving(student, "tflite"), polymorphic_shapes=poly,
                               with_gradient=False, native_serialization_platforms=("cpu",))
    module = tf.Module()
    module.serve = tf.function(converted, autograph=False, input_signature=[
        tf.TensorSpec((1 if batch == "1" else None, h, w, c), tf.uint8, name="images")])
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [module.serve.get_concrete_function()], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if student.quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data
        return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001  lowering (jax2tf) or conversion (ConverterError):
        # either's message can be a long MLIR dump; its first line is the reason
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"--format=tflite: the TFLite converter could not convert student "
                         f"'{student.config.student.model}' to builtin ops ({first})") from None


def tflite_runtime(runtime: str = "auto") -> tuple[str, Any]:
    """(name, Interpreter class): LiteRT's (`ai_edge_litert`) or `tf.lite`'s; 'auto' takes
    LiteRT where it is installed."""
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter
            return "ai_edge_litert", Interpreter
        except ImportError:
            if runtime == "litert":
                raise ValueError("runtime 'litert' needs ai-edge-litert: pip install -e "
                                 "'.[export]'") from None
    if runtime not in ("auto", "litert", "tf"):
        raise ValueError(f"unknown TFLite runtime '{runtime}'; choose auto, litert or tf")
    tf, _ = _tensorflow()
    return "tf.lite", tf.lite.Interpreter


def _interpreter(artifact: bytes, runtime: str, delegates: bool = True):
    """(runtime name, interpreter); `delegates=False`: the builtin kernels alone (the model's
    own ops and tensors, not the default XNNPACK delegate's replacement nodes)."""
    name, interpreter_class = tflite_runtime(runtime)
    kwargs = {}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = (
            sys.modules[interpreter_class.__module__].OpResolverType
            .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with warnings.catch_warnings():  # tf.lite's: 'deprecated, use ai_edge_litert'
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return name, interpreter_class(model_content=artifact, **kwargs)


def tflite_ops(artifact: bytes, runtime: str = "auto") -> list[str]:
    """The sorted names of the ops a TFLite artifact holds."""
    _, interpreter = _interpreter(artifact, runtime, delegates=False)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def tflite_integer_tensors(artifact: bytes, runtime: str = "auto") -> list[np.ndarray]:
    """The values of every quantized (int8, with scales) tensor a TFLite artifact holds."""
    _, interpreter = _interpreter(artifact, runtime, delegates=False)
    interpreter.allocate_tensors()
    return [np.array(interpreter.get_tensor(t["index"])) for t in interpreter.get_tensor_details()
            if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"])]


def check_integer_kernels(student: Student, fmt: str, artifact: bytes,
                          runtime: str = "auto") -> None:
    """Refuses, in one line, the artifact of a quantized student that does not hold every
    integer kernel of the student (quantization dropped on the way): for TFLite, each int8
    kernel must be stored exactly (value for value, in TFLite's layout); for StableHLO, as an
    integer constant of its shape and dtype."""
    kernels = student.integer_kernels()
    if fmt == "stablehlo":
        text = jax.export.deserialize(bytearray(artifact)).mlir_module()
        missing = quantization.missing_constants(
            kernels, quantization.stablehlo_integer_constants(text))
    else:
        missing = quantization.missing_kernels(kernels, tflite_integer_tensors(artifact, runtime))
    if missing:
        raise ValueError(f"--format={fmt}: the converted '{student.quantization}' student does "
                         f"not hold its integer kernels for {', '.join(missing)} (they would run "
                         "as float; TFLite's dynamic-range quantizer skips weights of fewer than "
                         "1,024 elements); not written")


def tflite_runner(artifact: bytes, runtime: str = "auto", delegates: bool = True):
    """(runtime name, images -> logits) of a TFLite artifact, resizing its input where a
    batch's shape differs; `delegates=False`: TFLite's builtin kernels alone."""
    name, interpreter = _interpreter(artifact, runtime, delegates)
    name = name if delegates else f"{name} (builtin kernels)"
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(f"the TFLite artifact has {len(ins)} inputs and {len(outs)} outputs, "
                         "not 1 and 1")
    (inp,), (out,) = ins, outs
    interpreter.allocate_tensors()
    shape = [tuple(inp["shape"])]

    def run(x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != shape[0]:
            interpreter.resize_tensor_input(inp["index"], x.shape, strict=True)
            interpreter.allocate_tensors()
            shape[0] = tuple(x.shape)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out["index"]))
    return name, run


def run_tflite(artifact: bytes, batches: list[np.ndarray], runtime: str = "auto",
               delegates: bool = True) -> tuple[str, list[np.ndarray]]:
    """(runtime name, outputs): `tflite_runner` on each batch."""
    name, run = tflite_runner(artifact, runtime, delegates)
    return name, [run(b) for b in batches]


# ---------------------------------------------------------------------------- verification

@dataclasses.dataclass(frozen=True)
class Verification:
    """An artifact run in its runtime against the JAX student on the same eval images."""

    runtime: str
    examples: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    agreement: float      # top-1 agreement with JAX
    accuracy: float       # the artifact's top-1 accuracy on those examples
    jax_accuracy: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _batches(images: np.ndarray, batch: str, size: int) -> list[np.ndarray]:
    if batch == "1":
        return [images[i:i + 1] for i in range(len(images))]
    return ([images[i:i + size] for i in range(0, len(images), size)]
            + [images[:n] for n in DYNAMIC_EXTRA_BATCHES if n <= len(images)])


def verify(student: Student, fmt: str, artifact: bytes, batch: str, images: np.ndarray,
           labels: np.ndarray, runtime: str = "auto") -> Verification:
    """Runs `artifact` in its runtime on `images` (see `_batches`) and compares its logits
    with the JAX student's; every output must be float32 [rows, num_classes]."""
    batches = _batches(images, batch, int(student.config.eval_batch_size))
    if fmt == "stablehlo":
        name, outputs = "jax.export.deserialize", run_stablehlo(artifact, batches)
    else:  # a quantized student: the builtin kernels, which round as qwix does (module doc)
        name, outputs = run_tflite(artifact, batches, runtime,
                                   delegates=student.quantization == quantization.NONE)
    reference = student.reference_logits(images)
    diff, got, start = 0.0, [], 0
    for b, o in zip(batches, outputs, strict=True):
        if o.shape != (len(b), student.num_classes) or o.dtype != np.float32:
            raise ValueError(f"the {fmt} artifact returned {o.dtype} {o.shape} for {len(b)} "
                             f"images, not float32 ({len(b)}, {student.num_classes})")
        rows = slice(start, start + len(b)) if start < len(images) else slice(0, len(b))
        diff = max(diff, float(np.max(np.abs(o - reference[rows]))))
        if start < len(images):
            got.append(o)
        start += len(b)
    got = np.concatenate(got)
    top, ref_top = np.argmax(got, -1), np.argmax(reference, -1)
    return Verification(
        runtime=name, examples=len(images), batch_sizes=tuple(sorted({len(b) for b in batches})),
        max_abs_diff=diff, tolerance=TOLERANCE[fmt] * max(1.0, float(np.max(np.abs(reference)))),
        agreement=float(np.mean(top == ref_top)), accuracy=float(np.mean(top == labels)),
        jax_accuracy=float(np.mean(ref_top == labels)))


# ---------------------------------------------------------------------------- export

@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    batch: str
    bytes: int
    sha256: str
    model: str
    step: int
    verification: Verification
    quantization: str = quantization.NONE  # the student's scheme; its integer kernels are stored

    def report(self) -> str:
        v = self.verification
        sizes = ", ".join(map(str, v.batch_sizes))
        kind = "" if self.quantization == quantization.NONE else f" {self.quantization}"
        return (f"exported the{kind} student ({self.model}, step {self.step}) as {self.format}, batch "
                f"{self.batch}: {self.path} ({self.bytes:,} bytes)\n"
                f"verified in {v.runtime} on {v.examples} eval images (batch sizes {sizes}): max "
                f"|logit - JAX| {v.max_abs_diff:.3g} (tolerance {v.tolerance:.3g}), top-1 "
                f"agreement {v.agreement:.4f}, accuracy {v.accuracy:.4f} (JAX {v.jax_accuracy:.4f})")


def check_request(fmt: str, batch: str, out: str, verify_batches: int = 3) -> None:
    """Refuses, in one line, a request that cannot be served, before anything is loaded."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    if batch not in BATCHES:
        raise ValueError(f"--batch={batch!r} is unknown; choose 1 or dynamic")
    if fmt == "onnx":
        raise ValueError(ONNX_UNSUPPORTED)
    if fmt == "tflite":
        _tensorflow()
    if not out:
        raise ValueError("--out is empty; give the path of the file to write")
    if os.path.isdir(out):
        raise ValueError(f"--out={out} is a directory; give the path of a file")
    if verify_batches < 1:
        raise ValueError(f"--verify_batches must be >= 1, got {verify_batches}")


def export(workdir: str, fmt: str, out: str, *, batch: str = "1", verify_batches: int = 3,
           runtime: str = "auto") -> ExportResult:
    """Exports the final student of the finished run in `workdir` as `fmt` to `out`, after
    verifying the artifact in its runtime on the first `verify_batches` eval batches (see
    the module doc); `out` is written only if it passes. `runtime`: the TFLite interpreter
    ('auto': LiteRT if installed, else tf.lite; 'litert'; 'tf')."""
    batch = str(batch)
    check_request(fmt, batch, out, verify_batches)
    student = load_student(workdir)
    artifact = (to_stablehlo if fmt == "stablehlo" else to_tflite)(student, batch)
    images, labels = student.eval_examples(verify_batches * int(student.config.eval_batch_size))
    check = verify(student, fmt, artifact, batch, images, labels, runtime)
    if student.quantization != quantization.NONE:
        check_integer_kernels(student, fmt, artifact, runtime)
    if fmt == "tflite":
        bad = [op for op in tflite_ops(artifact, runtime)
               if op.startswith("Flex") or op in _BUILTIN_EXCLUDED]
        if bad:
            raise ValueError(f"--format=tflite: the converted student holds non-builtin ops "
                             f"{bad}, which edge runtimes do not run; not written")
    if not check.ok:
        raise ValueError(f"the {fmt} artifact differs from the JAX student by "
                         f"{check.max_abs_diff:.3g} > {check.tolerance:.3g} (max |logit "
                         f"difference| on {check.examples} eval images); not written")
    out = os.path.abspath(os.path.expanduser(out))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    temporary = f"{out}.tmp"
    with open(temporary, "wb") as f:
        f.write(artifact)
    os.replace(temporary, out)
    return ExportResult(out, fmt, batch, len(artifact), hashlib.sha256(artifact).hexdigest(),
                        student.config.student.model, student.step, check, student.quantization)


# ---------------------------------------------------------------------------- the CLI

PROG = "jaxdistill"


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("workdir", None, "Workdir of a finished classification run.")
    flags.DEFINE_string("format", None, f"One of {', '.join(FORMATS)}.")
    flags.DEFINE_string("out", None, "The file to write.")
    flags.DEFINE_string("batch", "1", "1 (fixed batch of one) or dynamic (symbolic batch).")
    flags.DEFINE_integer("verify_batches", 3, "Eval batches the artifact is checked on.")
    flags.DEFINE_enum("runtime", "auto", ["auto", "litert", "tf"],
                      "TFLite interpreter for the check: LiteRT if installed, or tf.lite.")


def _error(message) -> SystemExit:
    return SystemExit(f"{PROG}: error: {' '.join(str(message).split())}")


def _parse(argv):
    from absl import flags
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"{PROG}: error: {' '.join(str(e).split())}\n")
        sys.exit(1)
    if len(rest) > 1:
        sys.stderr.write(f"{PROG}: error: unexpected argument(s) {rest[1:]}; give "
                         "--workdir, --format and --out as --flag=value\n")
        sys.exit(1)
    return rest


def _quiet() -> None:
    """Warnings only on the terminal, minus Orbax's read-only notices; TF's C++ logs off
    (absl's --verbosity keeps them all)."""
    from absl import logging as absl_logging

    from jaxdistill.logs import NOISE
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # the converter's C++ notices (TFDS sets 1)
    handler = absl_logging.get_absl_handler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda r: not any(n in r.getMessage() for n in NOISE))


def main(argv) -> None:
    del argv
    from absl import flags
    f = flags.FLAGS
    if not f["verbosity"].present:
        _quiet()
    for name in ("workdir", "format", "out"):
        if f[name].value is None:
            raise _error(f"--{name} is required ({f[name].help})")
    try:
        result = export(f.workdir, f.format, f.out, batch=f.batch,
                        verify_batches=f.verify_batches, runtime=f.runtime)
    except (ValueError, OSError) as e:
        if isinstance(e, OSError) and e.strerror:
            e = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        raise _error(e) from None
    print(result.report(), flush=True)


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main, flags_parser=_parse)
