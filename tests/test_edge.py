"""benchmarks/edge.py on a tiny workdir (a digits MLP teacher in <dir>/teacher, a pruned MLP
student (2:4) distilled from it in <dir>): every StableHLO and TFLite artifact measured in its
runtime (TFLite: tf.lite.Interpreter), the accuracy there equal to the trainer's own eval, the
TFLite figures equal to a direct tf.lite.Interpreter run of the written artifacts, the JSON /
Markdown / PNG written with their fields; the Pareto front against a hand-made case; a workdir
without a distillation run refused."""

import json
import warnings

import numpy as np
import pytest

import jaxdistill as jd
from benchmarks import edge
from jaxdistill import export as ex
from jaxdistill import pruning


def _config(widths):
    c = jd.base_config()
    c.data.name = "digits"
    c.student.model = "mlp"
    c.student.kwargs = {"widths": widths}
    c.batch_size, c.eval_batch_size, c.num_steps = 64, 120, 4
    c.optimizer.learning_rate = 0.05
    c.log_every = 0
    c.eval_every = c.checkpoint_every = 4
    return c


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    jd.train_and_evaluate(_config((16,)), str(root / "teacher"))
    c = _config((8,))
    c.teacher.model, c.teacher.kwargs = "mlp", {"widths": (16,)}
    c.teacher.checkpoint = str(root / "teacher")
    c.objective.kd = {"weight": 1.0, "temperature": 2.0}
    c.student.pruning.update(method="nm", n=2, m=4)  # 2:4 from step 0
    summary = jd.train_and_evaluate(c, str(root))
    out = root / "report"
    result = edge.report(str(root), str(out), formats=("stablehlo", "tflite"), latency_runs=5,
                         batch=16, runtime="tf")
    return root, out, result, summary


def test_report_measures_every_artifact(report):
    _, out, result, summary = report
    records = {(r["name"], r["format"]): r for r in result["records"]}
    assert sorted(records) == [("student", "stablehlo"), ("student", "tflite"),
                               ("teacher", "stablehlo"), ("teacher", "tflite")]
    for fmt in ("stablehlo", "tflite"):
        t, s = records[("teacher", fmt)], records[("student", fmt)]
        assert t["kind"] == "teacher" and s["kind"] == "pruned 2:4"
        assert t["params"] == 64 * 16 + 16 + 16 * 10 + 10 and s["params"] == 64 * 8 + 8 + 90
        assert s["nonzero_params"] <= s["params"] - (64 * 8 + 8 * 10) // 2
        assert t["agreement"] == 1.0 and t["compression"] == 1.0
        assert s["compression"] == pytest.approx(t["bytes"] / s["bytes"])
        assert s["bytes"] == (out / "artifacts" / f"student.{fmt}").stat().st_size
        assert s["accuracy"] == pytest.approx(summary["student_accuracy"], abs=1e-9)
        assert s["agreement"] == pytest.approx(summary["agreement"], abs=1e-9)
        assert s["max_abs_diff"] < 1e-4 and s["eval_examples"] == 360
        for r in (t, s):
            assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] and r["throughput"] > 0
    assert {r["runtime"] for r in result["records"]} == {"jax.export.deserialize", "tf.lite"}
    stored = json.loads((out / "edge.json").read_text())
    assert all(set(edge.FIELDS) <= set(r) for r in stored["records"])
    md = (out / "edge.md").read_text()
    assert md.count("| student |") == 2 and md.count("| teacher |") == 2
    assert (out / "edge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _interpreter_logits(path, images):
    """The logits of the TFLite artifact at `path` on `images`, run in one call of
    tf.lite.Interpreter (the builtin kernels and their default delegate)."""
    import tensorflow as tf
    with warnings.catch_warnings():  # 'tf.lite.Interpreter is deprecated'
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], images.shape, strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_tflite_figures_are_a_direct_interpreter_run(report):
    root, out, result, _ = report
    records = {(r["name"], r["format"]): r for r in result["records"]}
    teacher = ex.load_student(str(root / "teacher"))
    images, labels = teacher.eval_examples(10_000)
    teacher_top = np.argmax(teacher.reference_logits(images), -1)
    for name, workdir in (("teacher", root / "teacher"), ("student", root)):
        r = records[(name, "tflite")]
        assert r["path"] == str(out / "artifacts" / f"{name}.tflite")
        logits = _interpreter_logits(r["path"], images)
        top = np.argmax(logits, -1)
        assert r["accuracy"] == np.mean(top == labels)
        assert r["agreement"] == np.mean(top == teacher_top)
        reference = ex.load_student(str(workdir)).reference_logits(images)
        assert r["max_abs_diff"] == pytest.approx(np.abs(logits - reference).max(), abs=2e-6)
        assert r["params"] == records[(name, "stablehlo")]["params"]
        assert r["bytes"] > 4 * r["params"]  # float32 weights (the zeros stored too)


def test_two_four_student_trains_and_exports_with_its_zeros(report):
    """The trained 2:4 student (restored as export restores it) keeps exactly 2 of every 4
    kernel weights along the input axis; its artifact holds the zeros (the artifact's logits
    are the student's: max_abs_diff above)."""
    student = ex.load_student(str(report[0]))
    kernels = pruning.prunable(student.params, ("kernel",))
    assert sorted(kernels) == ["fc/kernel/value", "hidden/0/kernel/value"]
    for w in kernels.values():
        w = np.asarray(w)
        assert ((w.T.reshape(w.shape[1], -1, 4) != 0).sum(-1) == 2).all()


def test_pareto_front():
    records = [{"name": n, "bytes": b, "accuracy": a} for n, b, a in
               [("big", 100, 0.9), ("mid", 50, 0.9), ("small", 10, 0.8), ("worse", 60, 0.7),
                ("tiny", 5, 0.5)]]
    assert [r["name"] for r in edge.pareto(records)] == ["tiny", "small", "mid"]
    assert np.all(np.diff([r["bytes"] for r in edge.pareto(records)]) > 0)


def test_workdir_without_a_distillation_run_is_refused(report):
    root = report[0]
    with pytest.raises(ValueError) as e:
        edge.discover(str(root / "teacher"))
    assert str(e.value) == (
        f"--workdir={root / 'teacher'} holds no finished distillation run (a run whose "
        "config.teacher.checkpoint names its teacher)")
    with pytest.raises(ValueError) as e:
        edge.discover(str(root / "missing"))
    assert str(e.value) == f"--workdir={root / 'missing'}: no such directory"
