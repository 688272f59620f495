"""benchmarks/edge.py on a tiny workdir (a digits MLP teacher in <dir>/teacher, a pruned MLP
student (2:4) distilled from it in <dir>): every StableHLO artifact measured in its runtime (TFLite
is left to the benchmark: TensorFlow's import and conversion cost ~15 s here), the accuracy
there equal to the trainer's own eval, the JSON / Markdown / PNG written with their fields;
the Pareto front against a hand-made case; a workdir without a distillation run refused."""

import json

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
    result = edge.report(str(root), str(out), formats=("stablehlo",), latency_runs=5, batch=16)
    return root, out, result, summary


def test_report_measures_every_artifact(report):
    _, out, result, summary = report
    records = {(r["name"], r["format"]): r for r in result["records"]}
    assert sorted(records) == [("student", "stablehlo"), ("teacher", "stablehlo")]
    for fmt in ("stablehlo",):
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
    assert {r["runtime"] for r in result["records"]} == {"jax.export.deserialize"}
    stored = json.loads((out / "edge.json").read_text())
    assert all(set(edge.FIELDS) <= set(r) for r in stored["records"])
    md = (out / "edge.md").read_text()
    assert md.count("| student |") == 1 and md.count("| teacher |") == 1
    assert (out / "edge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    with pytest.raises(ValueError, match="holds no finished distillation run"):
        edge.discover(str(root / "teacher"))
    with pytest.raises(ValueError, match="no such directory"):
        edge.discover(str(root / "missing"))
