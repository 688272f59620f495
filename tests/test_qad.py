"""Quantization-aware distillation (`jaxdistill.quantization`, config.student.quantization).

The qwix fake-quant forward pass is pinned to a float64 NumPy int8 / int4 reference and its
gradient to the straight-through estimator's; a digits QAD run (a float teacher, an int8
student) trains, and resumed from its step-3 checkpoint ends on the same parameters as
uninterrupted; its StableHLO and TFLite exports hold the student's integer kernels and agree
with the JAX student in their runtimes; an artifact that lost them is refused; a bad scheme or
bit width is refused in one line, before anything is written."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx
from refusals import refusal

import jaxdistill as jd
from jaxdistill import export as ex
from jaxdistill import quantization, validate
from jaxdistill.experiment import teacher_config
from jaxdistill.models import build_model, decoder

STUDENT = {"widths": (128,)}  # 64*128 and 128*10 kernels: >= 1,024 elements each (TFLite's floor)


def _config(**fields):
    c = jd.base_config()
    c.data.name = "digits"
    # not 0.3: with mean * 255 = 76.5 the input rows' int8 grid puts every pixel on a .5 tie,
    # which float rounding breaks differently in each compiled program
    c.data.mean, c.data.std = (0.31,), (0.4,)
    c.batch_size, c.eval_batch_size = 64, 120
    c.optimizer.learning_rate, c.optimizer.schedule = 0.05, "constant"
    c.log_every = 0
    for key, value in fields.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A float teacher (3 steps) and an int8 QAD student from it (5 steps, checkpoints at 3
    and 5), then a copy of the student's workdir without step 5, rerun: it resumes at 3."""
    root = tmp_path_factory.mktemp("qad")
    teacher = str(root / "teacher")
    jd.train_and_evaluate(_config(**{"student.model": "mlp", "student.kwargs": {"widths": (32,)},
                                     "num_steps": 3, "eval_every": 3, "checkpoint_every": 3}),
                          teacher)
    student = _config(**{"student.model": "mlp", "student.kwargs": STUDENT,
                         "student.quantization": "int8", "teacher.model": "mlp",
                         "teacher.kwargs": {"widths": (32,)}, "teacher.checkpoint": teacher,
                         "objective.ce.weight": 0.5,
                         "objective.kd": {"weight": 0.5, "temperature": 4.0},
                         "num_steps": 5, "eval_every": 5, "checkpoint_every": 3})
    qad = str(root / "qad")
    jd.train_and_evaluate(student, qad)
    resumed = str(root / "resumed")
    shutil.copytree(qad, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "5"))
    os.remove(os.path.join(resumed, "summary.json"))
    jd.train_and_evaluate(student, resumed)
    return {"teacher": teacher, "qad": qad, "resumed": resumed}


@pytest.fixture(scope="module")
def student(runs):
    return ex.load_student(runs["qad"])


def _numpy_weights(w, scheme, tie_values=None):
    """(integers, scale, ties) of kernel `w` in float64: symmetric per output column; int8
    narrow range (scale max|w| / 127, round, [-127, 127]) or int4 (scale max|w| / 7.5, round
    half to even, clip [-8, 7]). int4's max|w| lands exactly on the 7.5 tie, which qwix's
    float32 division sends to either side: at those `ties` the integers are `tie_values`
    (qwix's), once checked to be one of the two neighbours."""
    bound, lo, hi = (127.0, -127, 127) if scheme == "int8" else (7.5, -8, 7)
    scale = np.abs(w).max(0, keepdims=True) / bound
    t = w / scale
    q = np.clip(np.round(t), lo, hi)
    ties = np.abs(np.abs(t) - 7.5) < 1e-4 if scheme != "int8" else np.zeros(t.shape, bool)
    if tie_values is not None:
        sides = np.clip(np.stack([np.floor(t), np.ceil(t)]), lo, hi)
        assert np.all((tie_values == sides[0]) | (tie_values == sides[1]) | ~ties)
        q = np.where(ties, tie_values, q)
    return q, scale, ties


def _numpy_quantized_mlp(params, x, scheme, integers):
    """The 2-layer MLP's quantized forward pass in float64 NumPy: `_numpy_weights` (qwix's
    `integers` at the int4 ties); int8 activations per row, asymmetric over
    [min(0, min x), max(0, max x)] in 255 steps with an integer zero point, clip [-128, 127];
    the products accumulate as integers, then are rescaled."""
    def dense(h, name):
        q, s, _ = _numpy_weights(params[f"{name}/kernel"], scheme, integers[f"{name}/kernel"])
        b = params[f"{name}/bias"]
        if scheme != "int8":
            return h @ (q * s) + b
        lo, hi = np.minimum(h.min(1, keepdims=True), 0), np.maximum(h.max(1, keepdims=True), 0)
        sx = (hi - lo) / 255.0
        zp = np.round(-128 - lo / sx)
        qx = np.clip(np.round(h / sx + zp), -128, 127)
        return ((qx - zp) @ q) * sx * s + b

    h = np.maximum(dense(x.reshape(len(x), -1), "hidden/0"), 0.0)
    return dense(h, "fc")


@pytest.mark.parametrize("scheme", ["int8", "int4_weights"])
def test_fake_quant_forward_is_the_numpy_integer_reference(scheme):
    # 6 examples into a 6 x 6 layer: the activation has the kernel's shape (QatProvider)
    model = build_model("mlp", num_classes=3, input_shape=(2, 3, 1), rngs=nnx.Rngs(3),
                        widths=(6,))
    x = jax.random.normal(jax.random.key(0), (6, 2, 3, 1)) + 0.3
    qat = quantization.qat_model(model, scheme, (2, 3, 1))
    params = {"/".join(map(str, k)): np.asarray(v[...], np.float64)
              for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    integer = quantization.integer_model(qat, scheme, (2, 3, 1))
    kernels = quantization.integer_kernels(integer)
    integers = {k: q.astype(np.float64) for k, (q, _) in kernels.items()}
    for name, q in integers.items():  # the integers qwix holds are the reference's
        expected_q, expected_scale, ties = _numpy_weights(params[name], scheme, q)
        assert kernels[name][0].dtype == (np.int8 if scheme == "int8" else jnp.int4)
        np.testing.assert_array_equal(q, expected_q)
        np.testing.assert_allclose(kernels[name][1], expected_scale, rtol=1e-6)
        assert ties.sum() <= ties.shape[1] and (scheme != "int8" or not ties.any())
    expected = _numpy_quantized_mlp(params, np.asarray(x, np.float64), scheme, integers)
    got = np.asarray(qat(x)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(model(x)[0]) - got).max() > 1e-3  # quantization changed it
    np.testing.assert_array_equal(np.asarray(integer(x)[0]), got)  # the integer form: the same

@pytest.mark.parametrize("scheme", ["int8", "int4_weights"])
def test_gradients_are_straight_through(scheme):
    """qwix's STE: the quantized layer's gradients are the float layer's (x^T c for the
    kernel, c W^T for the input), at the float weights and inputs (inside the ranges)."""
    layer = nnx.Linear(6, 4, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (3, 6))
    c = jax.random.normal(jax.random.key(3), (3, 4))
    qat = qwix.quantize_model(layer, quantization.QatProvider(quantization.rules(scheme)), x)
    graphdef, state = nnx.split(qat)

    def loss(state, x):
        return jnp.sum(c * nnx.merge(graphdef, state)(x))
    g_state, g_x = jax.grad(loss, argnums=(0, 1))(state, x)
    w = np.asarray(layer.kernel[...])
    np.testing.assert_allclose(np.asarray(g_state["kernel"][...]), np.asarray(x).T @ c, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_state["bias"][...]), np.asarray(c).sum(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_x), np.asarray(c) @ w.T, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(qat(x)) - np.asarray(layer(x))).max() > 1e-4  # forward quantized


def test_qad_run_trains_resumes_and_keeps_the_teacher_float(runs, student):
    qad, teacher = _summary(runs["qad"]), _summary(runs["teacher"])
    assert qad["steps"] == 5 and np.isfinite(qad["student_accuracy"])
    assert qad["teacher_accuracy"] == pytest.approx(teacher["student_accuracy"], abs=1e-12)
    resumed = _summary(runs["resumed"])
    assert resumed["student_params_sha256"] == qad["student_params_sha256"]
    with open(os.path.join(runs["resumed"], "metrics.jsonl")) as f:
        assert any(json.loads(line).get("step") == 5 for line in f)
    # the checkpoint holds the float latent weights; the student is the quantized one
    assert student.quantization == "int8"
    assert {np.asarray(v).dtype for v in jax.tree.leaves(student.params)} == {np.dtype("float32")}
    images, labels = student.eval_examples(10_000)
    accuracy = np.mean(student.reference_logits(images).argmax(-1) == labels)
    assert accuracy == pytest.approx(qad["student_accuracy"], abs=1e-9)
    plain = dataclasses.replace(student, graphdef=nnx.graphdef(
        quantization.float_model(student.model())), quantization="none")
    assert np.abs(plain.reference_logits(images) - student.reference_logits(images)).max() > 1e-4


@pytest.mark.parametrize("fmt", ["tflite", "stablehlo"])
def test_int8_export_holds_the_integer_kernels_and_agrees(runs, student, tmp_path, fmt):
    out = tmp_path / f"student.{fmt}"
    result = ex.export(runs["qad"], fmt, str(out), batch="dynamic", verify_batches=1)
    v = result.verification
    assert result.quantization == "int8" and v.ok and v.agreement == 1.0
    assert v.max_abs_diff <= ex.TOLERANCE[fmt] * max(1.0, 1.0)
    assert v.accuracy == v.jax_accuracy
    artifact = out.read_bytes()
    float_bytes = 4 * sum(np.asarray(x).size for x in jax.tree.leaves(student.params))
    assert len(artifact) < 0.7 * float_bytes  # int8 kernels, not float32 ones
    kernels = student.integer_kernels()
    assert sorted(kernels) == ["fc/kernel", "hidden/0/kernel"]
    if fmt == "tflite":
        stored = ex.tflite_integer_tensors(artifact)
        for q, _ in kernels.values():
            assert any(s.shape == q.T.shape and np.array_equal(s, q.T) for s in stored)
    else:
        text = jax.export.deserialize(bytearray(artifact)).mlir_module()
        assert quantization.missing_constants(
            kernels, quantization.stablehlo_integer_constants(text)) == []


@pytest.mark.parametrize("fmt", ["tflite", "stablehlo"])
def test_an_artifact_that_lost_the_quantization_is_refused(runs, tmp_path, monkeypatch, fmt):
    convert = getattr(ex, f"to_{fmt}")

    def float_student(student, batch="1"):  # an exporter that drops the quantization
        plain = dataclasses.replace(student, quantization="none", graphdef=nnx.graphdef(
            quantization.float_model(student.model())))
        return convert(plain, batch)
    monkeypatch.setattr(ex, f"to_{fmt}", float_student)
    out = tmp_path / "dropped"
    with pytest.raises(ValueError) as e:
        ex.export(runs["qad"], fmt, str(out), verify_batches=1)
    assert str(e.value) == (
        f"--format={fmt}: the converted 'int8' student does not hold its integer kernels for "
        "fc/kernel, hidden/0/kernel (they would run as float; TFLite's dynamic-range quantizer "
        "skips weights of fewer than 1,024 elements); not written")
    assert not list(tmp_path.iterdir())


BAD_SCHEMES = [
    ("int3", ("config.student.quantization='int3': bit width 3 is not supported for weights + "
              "activations; the supported width is 8 (int8); or 'none'")),
    ("int16_weights", ("config.student.quantization='int16_weights': bit width 16 is not "
                       "supported for weight-only quantization; the supported width is 4 "
                       "(int4_weights); or 'none'")),
    ("fp8", ("config.student.quantization='fp8' is an unknown quantization scheme; choose one "
             "of none, int8, int4_weights")),
]


@pytest.mark.parametrize("scheme, message", BAD_SCHEMES)
def test_bad_scheme_is_refused_in_one_line_before_anything_is_written(tmp_path, scheme, message):
    config = _config(**{"student.quantization": scheme})
    assert refusal(lambda: validate.check_config(config)) == message
    assert refusal(lambda: jd.train_and_evaluate(config, str(tmp_path / "run")),
                   tmp_path / "run") == message


def test_tflite_refuses_an_int4_student(student):
    with pytest.raises(ValueError) as e:
        ex.to_tflite(dataclasses.replace(student, quantization="int4_weights"))
    assert str(e.value) == (
        "--format=tflite: a 'int4_weights' student has no TFLite form here (TFLite's converter "
        "stores int8 kernels only); use --format=stablehlo, which keeps its integer kernels")


def test_what_a_quantized_student_cannot_be_combined_with_and_the_float_teacher(monkeypatch):
    lm = _config(**{"task": "causal_lm", "student.model": "lm_tiny", "data.name": "pystdlib",
                    "data.seq_len": 64, "lm.chunk_size": 16, "student.quantization": "int8"})
    validate.check_config(lm)  # the decoder's head stays float: chunked or not, the same
    # a decoder that declares no KERNELS (a user's own): all of it quantized, head included
    monkeypatch.delattr(decoder.Decoder, "KERNELS")
    with pytest.raises(ValueError) as e:
        validate.check_config(lm)
    assert str(e.value) == (
        "config.student.quantization: a chunked step calls the student's output head outside "
        "its quantized __call__; set config.lm.chunk_size=0 or config.student.quantization='none'")
    config = _config(**{"student.quantization": "int8", "teacher.model": "mlp"})
    assert teacher_config(config).student.quantization == "none"  # trained here: float
