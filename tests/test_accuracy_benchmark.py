"""The accuracy benchmark: one tiny real run end to end (digits, the Hinton suite with one
seed, a few steps, on the 8 host CPU devices of conftest: its JSON fields, the scratch student
with the teacher's jitter, the Markdown table and the PNG plots), and the Hinton (3 seeds, a
teacher each) and methods (2 seeds, one shared teacher) plans with synthetic records, whose
summaries are recomputed here with NumPy; the statistics pinned to hand values."""

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from benchmarks import accuracy_plan, accuracy_report, accuracy_run, accuracy_stats, plots
from jaxdistill.data.source import OFFLINE_BUILDERS, TEXT_BUILDERS

DIGITS_TEST = 360  # scikit-learn digits: the last 36 of each class
RECORD_FIELDS = ("suite", "name", "role", "seed", "method", "workdir", "dataset", "model",
                 "augment", "last_step", "last_accuracy", "best_step", "best_accuracy", "evals",
                 "eval_examples", "errors", "per_class_accuracy", "agreement", "params",
                 "flops_per_example", "examples_per_second", "teacher_workdir")
ROW_FIELDS = ("name", "role", "n", "seeds", "last_accuracy_mean", "last_accuracy_std",
              "best_accuracy_mean", "best_accuracy_std", "agreement_mean", "agreement_std",
              "gap_closed_per_seed", "gap_closed_mean", "gap_closed_std", "gap_closed_of_means",
              "per_class_accuracy_mean", "worst_classes", "params")
HINTON_NAMES = ("teacher", "scratch", "scratch_jitter", "distilled")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`python -m benchmarks.accuracy --quick` on the Hinton suite: teacher, scratch,
    scratch_jitter and distilled, seed 0, a tenth of the quick steps."""
    out = tmp_path_factory.mktemp("accuracy")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--quick",
                           "--suite=hinton", "--seeds=1", "--steps_scale=0.1",
                           "--compilation_cache=", f"--out={out}"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "accuracy.json") as f:
        result = json.load(f)
    return result, out, proc.stdout


BASE_ACCURACY = {"teacher": 0.95, "scratch": 0.90, "scratch_jitter": 0.94, "distilled": 0.93,
                 "kd": 0.93, "at": 0.91}


def _records(suite, rng):
    """Plausible records for the runs of a suite plan (1,000 test examples, 100 a class),
    shaped as `measure` writes them, without training anything."""
    records = []
    for run in suite.runs:
        correct = np.clip(rng.normal(100 * BASE_ACCURACY[run.name], 2.0, 10).round(), 0, 100)
        correct = correct.astype(int)
        last = float(correct.sum()) / 1000
        records.append({
            "suite": suite.name, "name": run.name, "role": run.role, "seed": run.seed,
            "method": run.name if run.role == "student" else None,
            "workdir": run.workdir, "external": False, "dataset": "mnist5k",
            "model": run.config.student.model, "steps": run.config.num_steps,
            "augment": run.config.data.augment,
            "teacher_workdir": run.teacher.workdir if run.teacher else None,
            "last_step": run.config.num_steps, "last_accuracy": last,
            "best_step": run.config.num_steps // 2, "best_accuracy": last + 0.002,
            "evals": [], "eval_examples": 1000, "errors": int(1000 - correct.sum()),
            "accuracy_from_predictions": last,
            "per_class_accuracy": [c / 100 for c in correct.tolist()],
            "agreement": None if run.role == "teacher" else float(rng.uniform(0.9, 1.0)),
            "agreement_from_run": None, "params": 3000 if run.role == "teacher" else 1000,
            "flops_per_example": 2000.0, "examples_per_second": 1e4, "wall_s": 1.0})
    return records


def _synthetic(out, tiny, suite_name, methods, seeds):
    """The plan of `suite_name` with synthetic records, summarised, rendered and plotted by
    the benchmark's own functions."""
    (suite,) = accuracy_plan.build_suites(suite_name, methods, seeds, out=str(out))
    result = {k: v for k, v in tiny[0].items() if k not in ("suites", "plots", "throughput")}
    result["suites"] = {suite_name: accuracy_stats.suite_result(
        suite, _records(suite, np.random.default_rng(0)))}
    result = accuracy_report.finish_report(result, str(out), log=lambda _: None)
    return suite, result, out


@pytest.fixture(scope="module")
def hinton(tmp_path_factory, tiny):
    """The hinton suite's plan: 3 seeds, each with its own teacher."""
    return _synthetic(tmp_path_factory.mktemp("hinton"), tiny, "hinton", None, 3)


@pytest.fixture(scope="module")
def methods(tmp_path_factory, tiny):
    """The methods suite's plan: kd and at over 2 seeds, one teacher shared by all."""
    return _synthetic(tmp_path_factory.mktemp("methods"), tiny, "methods", ["kd", "at"], 2)


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _gap(student, scratch, teacher):
    return (student - scratch) / (teacher - scratch) if teacher > scratch else None


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_statistics_by_hand():
    mean, std = accuracy_stats.mean_std([0.90, None, 0.92, 0.97])
    assert mean == pytest.approx(0.93, abs=1e-15)
    assert std == pytest.approx(np.sqrt((0.03**2 + 0.01**2 + 0.04**2) / 2), abs=1e-15)
    assert accuracy_stats.mean_std([0.5]) == (0.5, 0.0)
    assert accuracy_stats.mean_std([None]) == (None, None)
    assert accuracy_stats.gap_closed(0.96, 0.94, 0.98) == pytest.approx(0.5, abs=1e-12)
    assert accuracy_stats.gap_closed(0.99, 0.94, 0.98) == pytest.approx(1.25, abs=1e-12)
    assert accuracy_stats.gap_closed(0.96, 0.94, 0.94) is None  # no gap to close
    preds, labels = np.array([0, 1, 1, 2, 0, 2]), np.array([0, 1, 2, 2, 2, 0])
    assert accuracy_run.per_class_accuracy(preds, labels, 4) == [0.5, 1.0, 1 / 3, None]


def test_records_have_every_run_and_field(tiny):
    result, _, _ = tiny
    assert set(result["suites"]) == {"hinton"}
    assert result["flags"]["seeds"] == 1 and result["environment"]["device_count"] == 8
    runs = result["suites"]["hinton"]["runs"]
    # the seed's teacher, then: scratch, scratch with the teacher's jitter, the distilled one
    assert [(r["name"], r["role"]) for r in runs] == [
        ("teacher", "teacher"), ("scratch", "scratch"), ("scratch_jitter", "baseline"),
        ("distilled", "student")]
    assert [r["augment"] for r in runs] == ["jitter", "none", "jitter", "none"]
    for r in runs:
        for field in RECORD_FIELDS:
            assert field in r, (r["name"], field)
        assert r["dataset"] == "digits" and r["eval_examples"] == DIGITS_TEST
        assert len(r["per_class_accuracy"]) == 10
        assert r["last_step"] == r["steps"] == r["evals"][-1]["step"]
        assert r["best_accuracy"] == max(e["accuracy"] for e in r["evals"]) >= r["last_accuracy"]
        # the restored final student scores exactly what the run's last eval recorded
        assert r["accuracy_from_predictions"] == pytest.approx(r["last_accuracy"], abs=1e-12)
        assert r["errors"] == round((1 - r["last_accuracy"]) * DIGITS_TEST)
        # balanced classes (36 each): the per-class accuracies average to the accuracy
        assert np.mean(r["per_class_accuracy"]) == pytest.approx(r["last_accuracy"], abs=1e-9)
        if r["role"] == "teacher":
            assert r["agreement"] is None
        else:
            assert 0 <= r["agreement"] <= 1
        if r["role"] == "student":  # the trainer's eval computed the same agreement
            assert r["agreement"] == pytest.approx(r["agreement_from_run"], abs=1e-9)
    teacher = runs[0]
    assert all(r["teacher_workdir"] == teacher["workdir"] for r in runs[1:])
    assert teacher["params"] > runs[1]["params"] == runs[2]["params"] == runs[3]["params"]
    with open(os.path.join(runs[2]["workdir"], accuracy_run.RUN_CONFIG)) as f:
        jitter = json.load(f)
    with open(os.path.join(runs[1]["workdir"], accuracy_run.RUN_CONFIG)) as f:
        scratch = json.load(f)
    assert sorted(accuracy_run._diff(scratch, jitter)) == ["data.augment"]


@pytest.mark.parametrize("which", ["run", "hinton", "methods"])
def test_summaries_match_the_per_seed_records(tiny, hinton, methods, which):
    result = {"run": tiny[0], "hinton": hinton[1], "methods": methods[1]}[which]
    (s,) = result["suites"].values()
    runs, rows = s["runs"], {r["name"]: r for r in s["rows"]}
    names = ["teacher", "scratch", "scratch_jitter", "kd", "at"] if which == "methods" else list(
        HINTON_NAMES)
    assert [r["name"] for r in s["rows"]] == names
    teachers = {r["workdir"]: r for r in runs if r["role"] == "teacher"}
    scratch = {r["seed"]: r for r in runs if r["name"] == "scratch"}
    seeds = {"run": 1, "hinton": 3, "methods": 2}[which]
    for name in names:
        row, recs = rows[name], [r for r in runs if r["name"] == name]
        for field in ROW_FIELDS:
            assert field in row, (name, field)
        shared = name == "teacher" and which == "methods"
        assert row["n"] == len(recs) == (1 if shared else seeds)
        for field in ("last_accuracy", "best_accuracy", "errors"):
            values = [r[field] for r in recs]
            assert row[f"{field}_mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert row[f"{field}_std"] == pytest.approx(_std(values), abs=1e-12)
        if name == "teacher":
            assert row["agreement_mean"] is None and row["gap_closed_of_means"] is None
            continue
        agreement = [r["agreement"] for r in recs]
        assert row["agreement_mean"] == pytest.approx(np.mean(agreement), abs=1e-12)
        assert row["agreement_std"] == pytest.approx(_std(agreement), abs=1e-12)
        # per-class: the mean over seeds, and the classes lost most against each seed's teacher
        per_class = np.mean([r["per_class_accuracy"] for r in recs], 0)
        np.testing.assert_allclose(row["per_class_accuracy_mean"], per_class, atol=1e-12)
        diff = np.mean([np.subtract(r["per_class_accuracy"],
                                    teachers[r["teacher_workdir"]]["per_class_accuracy"])
                        for r in recs], 0)
        worst = row["worst_classes"]
        lost = [int(c) for c in np.argsort(diff, kind="stable") if diff[c] < 0][:3]
        assert [w["class"] for w in worst] == lost
        for w in worst:
            assert w["difference"] == pytest.approx(diff[w["class"]], abs=1e-12)
            assert w["student"] == pytest.approx(per_class[w["class"]], abs=1e-12)
        if name == "scratch":
            assert row["gap_closed_of_means"] is None and row["gap_closed_per_seed"] == []
            continue
        # the gap (the jittered baseline's too): each seed against its scratch student and
        # its teacher, and of the means
        triples = [(r["last_accuracy"], scratch[r["seed"]]["last_accuracy"],
                    teachers[r["teacher_workdir"]]["last_accuracy"]) for r in recs]
        per_seed = [_gap(*t) for t in triples]
        assert len(row["gap_closed_per_seed"]) == len(per_seed)
        for got, want in zip(row["gap_closed_per_seed"], per_seed):
            assert got == want if want is None else got == pytest.approx(want, abs=1e-12)
        valid = [g for g in per_seed if g is not None]
        if valid:
            assert row["gap_closed_mean"] == pytest.approx(np.mean(valid), abs=1e-12)
            assert row["gap_closed_std"] == pytest.approx(_std(valid), abs=1e-12)
        else:
            assert row["gap_closed_mean"] is None
        want = _gap(*np.mean(triples, 0))
        if want is None:
            assert row["gap_closed_of_means"] is None
        else:
            assert row["gap_closed_of_means"] == pytest.approx(want, abs=1e-12)


def test_markdown_and_plots_of_the_run(tiny):
    result, out, stdout = tiny
    md = (out / "accuracy.md").read_text()
    assert md.strip() in stdout  # the tables printed are the file written
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    rows = {r["name"]: r for r in result["suites"]["hinton"]["rows"]}
    for name, model in (("teacher", "mlp_teacher"), ("scratch", "mlp_student"),
                        ("scratch_jitter", "mlp_student"), ("distilled", "mlp_student")):
        line = next(line for line in table_rows if line.startswith(f"| {name} ({model}) |"))
        assert accuracy_report._gap(rows[name]) in [c.strip() for c in line.split("|")]
    assert any(line.startswith("| seed 0 |") for line in table_rows)
    assert "throughput plot skipped" in md
    assert any("throughput plot skipped" in n for n in result["notes"])
    assert set(result["plots"]) == {"hinton_accuracy", "hinton_accuracy_vs_params",
                                    "hinton_per_class", "hinton_errors"}
    for name in result["plots"].values():
        width, height = _png_size(out / name)
        assert width > 200 and height > 200
    assert not (out / "throughput.png").exists()


def test_methods_report(methods):
    suite, result, out = methods
    # one teacher (seed 0) shared by every student; per seed: scratch, scratch_jitter, methods
    assert [(r.name, r.seed) for r in suite.runs] == [("teacher", 0)] + [
        (n, s) for s in range(2) for n in ("scratch", "scratch_jitter", "kd", "at")]
    assert all(r.teacher is suite.runs[0] for r in suite.runs[1:])
    md = (out / "accuracy.md").read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    s = result["suites"]["methods"]
    for r in s["rows"]:
        label = r["name"] if r["role"] == "student" else f"{r['name']} (cnn)"
        line = next(line for line in table_rows if line.startswith(f"| {label} |"))
        assert accuracy_report._gap(r) in [c.strip() for c in line.split("|")]
    for c in range(10):  # the per-class table, a column per model
        line = next(line for line in table_rows if line.startswith(f"| {c} |"))
        assert [cell.strip() for cell in line.split("|")[2:-1]] == [
            f"{100 * r['per_class_accuracy_mean'][c]:.1f}" for r in s["rows"]]
    best = max((r for r in s["rows"] if r["role"] == "student"),
               key=lambda r: r["last_accuracy_mean"])
    assert [r["name"] for r in plots.per_class_rows(s)] == [
        "teacher", "scratch", "scratch_jitter", best["name"]]
    assert f"the best student, {best['name']} " in md
    assert set(result["plots"]) == {"methods_accuracy", "methods_accuracy_vs_params",
                                    "methods_per_class"}
    for name in result["plots"].values():
        _png_size(out / name)


def test_hinton_plan_and_report(hinton):
    suite, result, out = hinton
    # each seed: its own teacher (configs/mnist_kd.py), the scratch student, the scratch
    # student with the teacher's jitter, the distilled one
    assert [(r.name, r.seed) for r in suite.runs] == [
        (n, s) for s in range(3) for n in HINTON_NAMES]
    for teacher, scratch, jitter, distilled in zip(*[iter(suite.runs)] * 4):
        assert teacher.config.student.model == "mlp_teacher"
        assert teacher.config.seed == scratch.config.seed == distilled.config.seed
        assert teacher.config.data.augment == "jitter" and teacher.config.data.augment_pixels == 2
        assert scratch.config.student.model == distilled.config.student.model == "mlp_student"
        assert scratch.config.objective.to_dict() == {"ce": {"weight": 1.0}}
        assert scratch.config.data.augment == distilled.config.data.augment == "none"
        assert sorted(accuracy_run._diff(scratch.config.to_dict(), jitter.config.to_dict())) == [
            "data.augment"]
        assert jitter.config.data.augment == "jitter" and jitter.role == "baseline"
        assert distilled.config.objective.kd.temperature == 20.0
        assert distilled.config.optimizer.warmup_steps == 100
        assert distilled.config.teacher.checkpoint == teacher.workdir
        assert distilled.config.data.name == "mnist5k"
    s = result["suites"]["hinton"]
    pub = s["published"]
    assert (pub["teacher_errors"], pub["scratch_errors"], pub["distilled_errors"]) == (67, 146, 74)
    assert pub["test_examples"] == 10_000
    assert pub["gap_closed"] == pytest.approx(72 / 79)
    md = (out / "accuracy.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for name, published in (("teacher (mlp_teacher)", 67), ("scratch (mlp_student)", 146),
                            ("distilled (mlp_student)", 74)):
        line = next(r for r in rows if r.startswith(f"| {name} |"))
        assert f"| {published} | {published / 100:.2f} |" in line
    line = next(r for r in rows if r.startswith("| scratch_jitter (mlp_student) |"))
    assert line.endswith("| - | - |")  # no published number
    assert "Published gap closed: 91.1%" in md
    assert any(n.startswith("scratch_jitter: the scratch student trained with its teacher's "
                            "augmentation (data.augment='jitter', 2 px)") for n in s["notes"])
    by_name = {r["name"]: r for r in s["rows"]}
    gaps = {n: by_name[n]["gap_closed_of_means"] for n in ("scratch_jitter", "distilled")}
    assert f"scratch_jitter {100 * by_name['scratch_jitter']['last_accuracy_mean']:.2f}% " \
           f"({gaps['scratch_jitter']:.1%} of it)" in md
    recs = {(r["name"], r["seed"]): r for r in s["runs"]}
    assert "| seed | teacher | scratch | scratch_jitter | distilled | gap closed " \
           "(scratch_jitter) | gap closed (distilled) |" in md
    for seed in range(3):
        line = next(r for r in rows if r.startswith(f"| seed {seed} |"))
        t, sc = recs[("teacher", seed)], recs[("scratch", seed)]
        for n in ("scratch_jitter", "distilled"):
            g = _gap(recs[(n, seed)]["last_accuracy"], sc["last_accuracy"], t["last_accuracy"])
            assert f"{g:.1%}" in [cell.strip() for cell in line.split("|")]
    assert set(result["plots"]) == {"hinton_accuracy", "hinton_accuracy_vs_params",
                                    "hinton_per_class", "hinton_errors"}
    for name in result["plots"].values():
        _png_size(out / name)
    assert [r["name"] for r in plots.per_class_rows(s)] == list(HINTON_NAMES)


def test_report_adds_the_throughput_plot(tiny, tmp_path):
    """What `--report_only --throughput_json=...` does, in process."""
    result, _, _ = tiny
    records = [{"pair": "mlp", "mode": m, "batch_size": b, "dtype": "float32",
                "teacher": "mlp_teacher", "student": "mlp_student", "devices": 8,
                "device_kind": "cpu", "examples_per_second": float(e)}
               for b in (32, 64) for m, e in (("student", 900), ("teacher_forward", 1500),
                                              ("kd_online", 500), ("feature", 450))]
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(records))
    report = tmp_path / "report"
    report.mkdir()
    accuracy_report.finish_report(json.loads(json.dumps(result)), str(report), str(path),
                                  log=lambda _: None)
    with open(report / "accuracy.json") as f:
        again = json.load(f)
    assert again["throughput"]["records"] == records
    assert again["plots"]["throughput"] == "throughput.png"
    _png_size(report / "throughput.png")
    assert not any("throughput plot skipped" in n for n in again["notes"])
    assert again["suites"] == result["suites"]


def test_bad_arguments_and_the_cifar100_plan(tmp_path):
    with pytest.raises(ValueError) as e:
        accuracy_plan.build_suites("methods", ["kdd"], 1, out=str(tmp_path))
    assert str(e.value) == (
        "--methods: unknown method 'kdd'; choose from ['kd', 'lskd', 'dkd', 'lsdkd', 'fitnet', "
        "'at', 'sp', 'rkd', 'pkt', 'crd', 'adversarial', 'fkl', 'rkl', 'jsd', 'tvd']")
    with pytest.raises(ValueError) as e:
        accuracy_plan.build_suites("methods", None, 0, out=str(tmp_path))
    assert str(e.value) == "--seeds must be >= 1, got 0"
    with pytest.raises(ValueError) as e:
        accuracy_plan.build_suites("nope", None, 1, out=str(tmp_path))
    assert str(e.value) == (
        "--suite: unknown suite 'nope'; choose from ['methods', 'hinton', 'cifar100', 'all']")
    with pytest.raises(ValueError) as e:
        accuracy_plan.build_suites("hinton", None, 1, out=str(tmp_path), teacher_checkpoint="/x")
    assert str(e.value) == (
        "--teacher_checkpoint applies to --suite=methods or cifar100 (the hinton suite trains "
        "one teacher per seed)")

    data_dir = str(tmp_path / "tfds")
    (suite,) = accuracy_plan.build_suites("cifar100", None, 2, out=str(tmp_path),
                                          data_dir=data_dir, scale=0.001)
    teacher = suite.runs[0]
    assert teacher.name == "teacher" and teacher.config.student.model == "resnet32x4"
    assert teacher.config.teacher.model == ""
    assert teacher.config.num_steps == round(240 * 50_000 // 64 * 0.001)
    # the students already train with the teacher's augmentation: no augmented baseline
    assert {r.role for r in suite.runs} == {"teacher", "scratch", "student"}
    students = [r for r in suite.runs if r.role == "student"]
    assert [r.name for r in students] == list(accuracy_plan.CIFAR100_METHODS) * 2
    for r in suite.runs:
        assert r.config.data.name == "cifar100" and r.config.data.data_dir == data_dir
    for r in students:
        assert r.config.student.model == "resnet8x4" and r.config.teacher.model == "resnet32x4"
        assert r.config.teacher.checkpoint == teacher.workdir
    dkd = next(r for r in students if r.name == "dkd")
    assert dkd.config.objective.dkd.warmup_steps == round(20 * 50_000 // 64 * 0.001)
    assert suite.published["crd"] == 75.51 and suite.published["teacher"] == 79.42
    # nothing is downloaded: an unprepared cifar100 is refused before anything trains
    with pytest.raises(ValueError) as e:
        accuracy_plan.validate([suite])
    offline = ", ".join([*OFFLINE_BUILDERS, *TEXT_BUILDERS])
    assert str(e.value) == (
        f"config.data.name='cifar100': dataset is not prepared in data_dir={data_dir!r}; nothing "
        f"is ever downloaded. Prepare it where there is network with `tfds build cifar100 "
        f"--data_dir={data_dir} --file_format=array_record` (for config.data.reader='grain'; "
        "plain `tfds build` writes tfrecord, for reader 'tf'), or use an offline dataset: "
        f"{offline}.")


def test_a_run_dir_of_another_config_is_refused(tmp_path):
    (a,) = accuracy_plan.build_suites("hinton", None, 1, quick=True, out=str(tmp_path))
    (b,) = accuracy_plan.build_suites("hinton", None, 1, quick=True, out=str(tmp_path),
                                      scale=0.5)
    accuracy_run._check_run_dir(a.runs[0])
    accuracy_run._check_run_dir(a.runs[0])  # same config: reused
    assert os.path.exists(os.path.join(a.runs[0].workdir, accuracy_run.RUN_CONFIG))
    with pytest.raises(ValueError) as e:
        accuracy_run._check_run_dir(b.runs[0])
    assert str(e.value) == (
        f"{b.runs[0].workdir} holds a run with a different config (differs in checkpoint_every, "
        "eval_every, log_every, num_steps, optimizer.warmup_steps); use a fresh --out or "
        "delete that directory")


def test_the_command_keeps_the_names_other_benchmarks_use():
    """benchmarks/accuracy.py is the CLI and the facade the other benchmarks import from:
    every `acc.NAME` and `from benchmarks.accuracy import NAME` of benchmarks/ resolves."""
    from benchmarks import accuracy
    used = set()
    for name in os.listdir(os.path.join(ROOT, "benchmarks")):
        if name.endswith(".py") and not name.startswith("accuracy"):
            with open(os.path.join(ROOT, "benchmarks", name)) as f:
                text = f.read()
            used |= set(re.findall(r"\bacc\.(\w+)", text))
            for names in re.findall(r"from benchmarks\.accuracy import ([\w, ]+)", text):
                used |= {n.strip() for n in names.split(",") if n.strip()}
    assert {"measure", "load_config", "enable_compilation_cache", "_table"} <= used
    assert sorted(n for n in used if not hasattr(accuracy, n)) == []
    assert accuracy.measure is accuracy_run.measure
    assert accuracy.build_suites is accuracy_plan.build_suites
