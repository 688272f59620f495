"""`jaxdistill.export`: a finished digits run's student (an MLP and a CNN, trained once per
module with a non-trivial mean / std) exported to StableHLO and TFLite at batch 1 and with a
symbolic batch, each artifact run in its own runtime on raw uint8 eval images and compared
with the student (a float64 NumPy forward pass for the MLP; for both, the accuracy the
trainer's own eval wrote to summary.json); and every refusal, in one line, writing nothing."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

import jaxdistill as jd
from jaxdistill import export as ex

MEAN, STD = 0.3, 0.4
STUDENTS = {"mlp": ("mlp", {"widths": (32,)}), "cnn": ("cnn", {"widths": (8, 16), "hidden": 32})}


def _train(workdir, model, kwargs):
    config = jd.base_config()
    config.data.name = "digits"
    config.data.mean, config.data.std = (MEAN,), (STD,)
    config.student.model = model
    config.student.kwargs = kwargs
    config.batch_size, config.eval_batch_size, config.num_steps = 64, 120, 6
    config.optimizer.learning_rate = 0.05
    config.eval_every = config.checkpoint_every = 6
    config.log_every = 0
    jd.train_and_evaluate(config, str(workdir))
    with open(workdir / "summary.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {name: (root / name, _train(root / name, *spec)) for name, spec in STUDENTS.items()}


@pytest.fixture(scope="module")
def student(runs):
    return ex.load_student(str(runs["mlp"][0]))


@pytest.fixture(scope="module")
def test_split(student):
    return student.eval_examples(10_000)  # the whole test split: 360 images, uint8


def _numpy_mlp(student, images):
    """The MLP student in float64 NumPy, from the restored weights: preprocessing, then
    Linear -> ReLU -> Linear."""
    p = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
         .removesuffix("/value"): np.asarray(leaf, np.float64)
         for path, leaf in jax.tree_util.tree_flatten_with_path(student.params)[0]}
    assert sorted(p) == ["fc/bias", "fc/kernel", "hidden/0/bias", "hidden/0/kernel"], sorted(p)
    x = (images.astype(np.float64) / 255.0 - MEAN) / STD
    h = np.maximum(x.reshape(len(x), -1) @ p["hidden/0/kernel"] + p["hidden/0/bias"], 0.0)
    return h @ p["fc/kernel"] + p["fc/bias"]


def _reference(name, runs, images):
    s = ex.load_student(str(runs[name][0]))
    return _numpy_mlp(s, images) if name == "mlp" else s.reference_logits(images)


def test_reference_is_the_trained_student(runs, student, test_split):
    images, labels = test_split
    assert images.dtype == np.uint8 and images.shape == (360, 8, 8, 1)
    assert student.params_sha256 == runs["mlp"][1]["student_params_sha256"]
    reference = student.reference_logits(images)
    np.testing.assert_allclose(reference, _numpy_mlp(student, images), atol=1e-5, rtol=1e-5)
    accuracy = np.mean(np.argmax(reference, -1) == labels)
    assert accuracy == pytest.approx(runs["mlp"][1]["student_accuracy"], abs=1e-9)


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize("batch", ex.BATCHES)
def test_stablehlo(runs, test_split, tmp_path, name, batch):
    images, labels = test_split
    out = tmp_path / f"{name}.stablehlo"
    result = ex.export(str(runs[name][0]), "stablehlo", str(out), batch=batch, verify_batches=1)
    with open(out, "rb") as f:
        blob = f.read()
    assert result.bytes == len(blob) == os.path.getsize(out) and result.verification.ok
    exported = jax.export.deserialize(bytearray(blob))
    call = jax.jit(exported.call)
    (aval,), (out_aval,) = exported.in_avals, exported.out_avals
    assert aval.dtype == np.uint8 and aval.shape[1:] == (8, 8, 1)
    assert out_aval.dtype == np.float32 and out_aval.shape[1:] == (10,)
    if batch == "1":
        assert aval.shape[0] == 1 and out_aval.shape[0] == 1
        got = np.concatenate([np.asarray(call(images[i:i + 1])) for i in range(len(images))])
    else:
        assert not isinstance(aval.shape[0], int)  # symbolic
        got = np.concatenate([np.asarray(call(images[:200])), np.asarray(call(images[200:]))])
        assert np.asarray(call(images[:3])).shape == (3, 10)
    reference = _reference(name, runs, images)
    tolerance = ex.TOLERANCE["stablehlo"] * max(1.0, np.abs(reference).max())
    assert np.abs(got - reference).max() <= tolerance
    assert np.mean(np.argmax(got, -1) == labels) == pytest.approx(
        runs[name][1]["student_accuracy"], abs=1e-9)


def _runtimes():
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return ["tf"]
    return ["tf", "litert"]


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize("batch", ex.BATCHES)
def test_tflite(runs, test_split, tmp_path, name, batch):
    pytest.importorskip("tensorflow")
    images, labels = test_split
    out = tmp_path / f"{name}.tflite"
    result = ex.export(str(runs[name][0]), "tflite", str(out), batch=batch, verify_batches=1)
    blob = out.read_bytes()
    assert result.bytes == len(blob) and result.verification.ok
    assert result.verification.agreement == 1.0
    ops = ex.tflite_ops(blob, "tf")
    assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], ops
    assert "FULLY_CONNECTED" in ops and ("CONV_2D" in ops) == (name == "cnn")
    reference = _reference(name, runs, images)
    tolerance = ex.TOLERANCE["tflite"] * max(1.0, np.abs(reference).max())
    for runtime in _runtimes():
        _, interpreter = ex._interpreter(blob, runtime)
        (inp,) = interpreter.get_input_details()
        assert inp["dtype"] == np.uint8
        assert list(inp["shape_signature"]) == [1 if batch == "1" else -1, 8, 8, 1]
        batches = ([images[i:i + 1] for i in range(len(images))] if batch == "1"
                   else [images[:250], images[250:]])
        _, outputs = ex.run_tflite(blob, batches, runtime)
        got = np.concatenate(outputs)
        assert got.dtype == np.float32 and got.shape == (360, 10)
        assert np.abs(got - reference).max() <= tolerance, runtime
        assert np.mean(np.argmax(got, -1) == labels) == pytest.approx(
            runs[name][1]["student_accuracy"], abs=1e-9)


def test_a_wrong_artifact_is_refused_and_not_written(runs, tmp_path, monkeypatch):
    """An artifact without the normalisation inside differs from the student: refused."""
    def no_normalisation(self):
        def serve(images):
            x = images.astype(np.float32) / 255.0
            return ex.forward(self.graphdef, self.params, self.batch_stats, x, train=False)[0]
        return serve
    monkeypatch.setattr(ex.Student, "serving_function", no_normalisation)
    out = tmp_path / "wrong.stablehlo"
    with pytest.raises(ValueError) as e:
        ex.export(str(runs["mlp"][0]), "stablehlo", str(out), verify_batches=1)
    assert re.fullmatch(r"the stablehlo artifact differs from the JAX student by [0-9.e+-]+ > "
                        r"[0-9.e+-]+ \(max \|logit difference\| on 120 eval images\); not "
                        r"written", str(e.value)), str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def _copy(run, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def _edit_summary(workdir, **fields):
    path = workdir / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(fields)
    path.write_text(json.dumps(summary))


def test_refusals(runs, tmp_path, monkeypatch):
    run = runs["mlp"][0]
    out = str(tmp_path / "out" / "model.bin")
    cases = [  # (workdir, format, batch, the message: <tmp> is tmp_path, <sha> a digest)
        (str(run), "pytorch", "1",
         "--format='pytorch' is unknown; choose one of stablehlo, tflite, onnx"),
        (str(run), "stablehlo", "4", "--batch='4' is unknown; choose 1 or dynamic"),
        (str(run), "onnx", "1", ("--format=onnx is not supported: jax2onnx, the JAX -> ONNX "
                                 "exporter, requires orbax-checkpoint<0.11.37 in every release up "
                                 "to 0.17.1 and would downgrade this project's orbax-checkpoint "
                                 "0.12; use --format=stablehlo or --format=tflite")),
        (str(tmp_path / "missing"), "stablehlo", "1", ("--workdir=<tmp>/missing: no such "
                                                       "directory; give the workdir of a "
                                                       "finished training run")),
        (str(tmp_path), "stablehlo", "1", ("no <tmp>/config.json: --workdir must be the workdir "
                                           "of a training run")),
    ]
    no_summary = _copy(run, tmp_path, "no_summary")
    (no_summary / "summary.json").unlink()
    cases.append((str(no_summary), "stablehlo", "1", (
        "--workdir=<tmp>/no_summary is not a finished run: it has no summary.json (a run writes "
        "it when it ends); rerun its training command to finish it")))
    short = _copy(run, tmp_path, "short")
    _edit_summary(short, steps=3)
    cases.append((str(short), "stablehlo", "1", (
        "--workdir=<tmp>/short is not a finished run: summary.json records step 3 of "
        "config.num_steps=6; rerun its training command to finish it")))
    other = _copy(run, tmp_path, "other")
    _edit_summary(other, student_params_sha256="0" * 64)
    cases.append((str(other), "stablehlo", "1", (
        "--workdir=<tmp>/other: the parameters of its newest checkpoint (step 6, sha256 <sha>) "
        "are not the student summary.json records (000000000000); rerun its training command "
        "to finish it")))
    no_checkpoint = _copy(run, tmp_path, "no_checkpoint")
    shutil.rmtree(no_checkpoint / "checkpoints")
    cases.append((str(no_checkpoint), "stablehlo", "1", (
        "--workdir=<tmp>/no_checkpoint is not a finished run: it has no checkpoint in "
        "<tmp>/no_checkpoint/checkpoints")))
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"task": "causal_lm",
                                                "student": {"model": "lm_tiny"}}))
    cases.append((str(lm), "stablehlo", "1", ("--workdir=<tmp>/lm is a 'causal_lm' run: export "
                                              "is not supported yet for that task "
                                              "(classification students only)")))
    for workdir, fmt, batch, message in cases:
        with pytest.raises(ValueError) as e:
            ex.export(workdir, fmt, out, batch=batch)
        pattern = re.escape(message.replace("<tmp>", str(tmp_path))).replace("<sha>", "[0-9a-f]{12}")
        assert re.fullmatch(pattern, str(e.value)), str(e.value)
    with pytest.raises(ValueError) as e:
        ex.export(str(run), "stablehlo", str(tmp_path))
    assert str(e.value) == f"--out={tmp_path} is a directory; give the path of a file"
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # TensorFlow not installed
    with pytest.raises(ValueError) as e:
        ex.export(str(run), "tflite", out)
    assert str(e.value) == (
        "--format=tflite needs TensorFlow (jax2tf and the TFLite converter): install the tf "
        "extra, pip install -e '.[tf]'")
    assert not (tmp_path / "out").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxdistill.export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_command(runs, tmp_path):
    out = tmp_path / "student.stablehlo"
    proc = _cli(f"--workdir={runs['cnn'][0]}", "--format=stablehlo", "--batch=dynamic",
                f"--out={out}", "--verify_batches=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()
    assert f"{out} ({out.stat().st_size:,} bytes)" in first and "batch dynamic" in first
    assert "batch sizes 1, 7, 120" in second and "max |logit - JAX|" in second
    assert "WARNING" not in proc.stderr  # Orbax's read-only notices are dropped
    for args, message in [
        ((f"--workdir={tmp_path}", "--format=onnx", f"--out={out}"), "--format=onnx is not supported"),
        ((f"--workdir={tmp_path}", f"--out={out}"), "--format is required"),
    ]:
        proc = _cli(*args)
        assert proc.returncode == 1 and proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("jaxdistill: error: ") and message in line, line
