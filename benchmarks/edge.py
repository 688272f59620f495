r"""The edge report: what each deployable artifact of a workdir costs and what it keeps.

    python -m benchmarks.edge --workdir=DIR --out=OUT [--formats=stablehlo,tflite]
        [--include=GLOB,...] [--latency_runs=200] [--throughput_batch=256]

Models: every finished run under DIR (DIR itself and its sub-folders, e.g. the demo's
`teacher/` and `scratch/`, or a benchmark's `runs/...`; `--include` keeps the runs whose path
relative to DIR matches one of the globs) and their common teacher (the runs'
`config.teacher.checkpoint`, inside DIR or not). Each is a float, pruned (config.student.pruning)
or quantized (config.student.quantization) student, or the teacher.

Artifacts: each model exported by `jaxdistill.export.export` in each format, with a dynamic
batch (the artifact takes uint8 images `[B, H, W, C]`, preprocessing inside, and returns
logits; it is verified there in its runtime against JAX before it is written) to
OUT/artifacts/<model>.<format>. Per artifact, run in its own runtime on this CPU
(StableHLO: `jax.export.deserialize` + jit; TFLite: LiteRT or tf.lite, default threads):
  params            parameters of the model (and how many are nonzero: a pruned model's
                    zeros are stored, so it exports like a float student of the same size)
  bytes             bytes on disk, and gzip -9 of them (what sparsity buys once compressed)
  compression       teacher's bytes / the artifact's, in the same format
  accuracy          top-1 on the whole held-out split, from the artifact's own logits
  agreement         top-1 agreement with the teacher (its JAX logits on the same images)
  max_abs_diff      max |artifact logit - JAX logit| over the split
  latency p50/p90   one image per call, `--latency_runs` calls after warm-up (ms)
  throughput        images/s at batch `--throughput_batch` (median of 5 calls after warm-up)
Writes OUT/edge.json, OUT/edge.md and OUT/edge.png (accuracy against bytes on disk, a point
per artifact, the Pareto front: no other artifact is both smaller and more accurate).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import gzip
import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from jaxdistill import checkpoint, logs
from jaxdistill import export as ex
from jaxdistill.generate import read_config
from jaxdistill.sweep_report import pareto_front

if __package__:
    from benchmarks import accuracy as acc
    from benchmarks import plots
else:
    import accuracy as acc
    import plots

EXTENSIONS = {"stablehlo": "stablehlo", "tflite": "tflite"}
FIELDS = ("name", "kind", "format", "runtime", "params", "nonzero_params", "bytes", "gzip_bytes",
          "compression", "accuracy", "agreement", "max_abs_diff", "latency_ms_p50",
          "latency_ms_p90", "throughput", "throughput_batch")


# ----------------------------------------------------------------------------- the models

def _finished(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, n))
               for n in ("config.json", ex.SUMMARY, checkpoint.CHECKPOINT_DIR))


def _run_dir(path: str) -> str:
    """The workdir a `config.teacher.checkpoint` names (a workdir or its checkpoints/)."""
    path = os.path.abspath(os.path.expanduser(path))
    return os.path.dirname(path) if os.path.basename(path) == checkpoint.CHECKPOINT_DIR else path


def teacher_of(workdir: str) -> str | None:
    """The workdir of a run's teacher: its config.teacher.checkpoint, or `<workdir>/teacher`
    (recorded as '': the run trained it there); None without a teacher."""
    teacher = read_config(workdir).teacher
    if not teacher.model:
        return None
    return _run_dir(teacher.checkpoint or os.path.join(workdir, "teacher"))


def discover(workdir: str, include=()) -> tuple[str, list[tuple[str, str]]]:
    """(teacher workdir, [(name, workdir)] of the students): the finished runs under
    `workdir` (matching `include`, globs on their path relative to it) other than their
    teacher, which must be one run for all."""
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir}: no such directory")
    runs = []
    for root, dirs, _ in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if d not in (checkpoint.CHECKPOINT_DIR, "artifacts"))
        if _finished(root):
            rel = os.path.relpath(root, workdir)
            if not include or rel == "." or any(fnmatch.fnmatch(rel, g) for g in include):
                runs.append((rel, root))
    teachers = sorted({t for t in (teacher_of(wd) for _, wd in runs) if t})
    if not teachers:
        raise ValueError(f"--workdir={workdir} holds no finished distillation run (a run whose "
                         "config.teacher.checkpoint names its teacher)")
    if len(teachers) > 1:
        raise ValueError(f"--workdir={workdir}: its runs distil from {len(teachers)} teachers "
                         f"({', '.join(teachers)}); pick one teacher's runs with --include")
    students = [("student" if rel == "." else rel, wd) for rel, wd in runs
                if os.path.abspath(wd) != teachers[0]]
    if not students:
        raise ValueError(f"--workdir={workdir}: no finished student besides the teacher")
    return teachers[0], students


def exports_quantized() -> bool:
    """Whether `jaxdistill.export` writes a quantized student's integer form."""
    return "quantization" in {f.name for f in dataclasses.fields(ex.Student)}


def kind(config, teacher: bool) -> str:
    """'teacher', or the student's form: 'float', 'pruned <sparsity>', '<quantization>'."""
    if teacher:
        return "teacher"
    parts = []
    p = config.student.get("pruning")
    if p is not None and p.method != "none":
        parts.append(f"pruned {p.method} {p.sparsity:g}" if p.method == "magnitude"
                     else f"pruned {p.n}:{p.m}")
    q = config.student.get("quantization", "none")
    if q != "none":
        parts.append(str(q))
    return " + ".join(parts) or "float"


# ----------------------------------------------------------------------------- runtimes

def latency_ms(run, images: np.ndarray, runs: int) -> tuple[float, float]:
    """(p50, p90) milliseconds of one-image calls, cycling over `images`, after 5 warm-up
    calls."""
    for i in range(5):
        run(images[i % len(images)][None])
    times = []
    for i in range(runs):
        x = images[i % len(images)][None]
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    p50, p90 = np.percentile(np.asarray(times) * 1e3, [50, 90])
    return float(p50), float(p90)


def throughput(run, images: np.ndarray, batch: int) -> float:
    """Images per second at `batch` (images tiled to fill it): median of 5 calls after 2."""
    x = np.resize(images, (batch, *images.shape[1:]))
    for _ in range(2):
        run(x)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


# ----------------------------------------------------------------------------- the report

def measure(name: str, workdir: str, role_kind: str, fmt: str, out: str, images, labels,
            teacher_top, *, latency_runs: int, batch: int, runtime: str = "auto") -> dict:
    """Exports one model as `fmt` into OUT/artifacts and measures it in its runtime."""
    path = os.path.join(out, "artifacts", f"{name.replace(os.sep, '_')}.{EXTENSIONS[fmt]}")
    result = ex.export(workdir, fmt, path, batch="dynamic", verify_batches=1, runtime=runtime)
    with open(path, "rb") as f:
        artifact = f.read()
    rt, run = (ex.stablehlo_runner(artifact) if fmt == "stablehlo"
               else ex.tflite_runner(artifact, runtime))
    student = ex.load_student(workdir)
    size = int(student.config.eval_batch_size)
    logits = np.concatenate([run(images[i:i + size]) for i in range(0, len(images), size)])
    reference = student.reference_logits(images)
    top = np.argmax(logits, -1)
    leaves = [np.asarray(x) for x in jax.tree.leaves(student.params)]
    p50, p90 = latency_ms(run, images, latency_runs)
    return {"name": name, "kind": role_kind, "format": fmt, "runtime": rt, "path": path,
            "workdir": workdir, "model": student.config.student.model,
            "params": int(sum(x.size for x in leaves)),
            "nonzero_params": int(sum(np.count_nonzero(x) for x in leaves)),
            "bytes": os.path.getsize(path), "gzip_bytes": len(gzip.compress(artifact, 9)),
            "accuracy": float(np.mean(top == labels)),
            "agreement": float(np.mean(top == teacher_top)),
            "max_abs_diff": float(np.max(np.abs(logits - reference))),
            "export_check_max_abs_diff": result.verification.max_abs_diff,
            "latency_ms_p50": p50, "latency_ms_p90": p90,
            "throughput": throughput(run, images, batch), "throughput_batch": batch,
            "eval_examples": len(labels)}


def pareto(records: list[dict]) -> list[dict]:
    """The artifacts no other artifact beats on both bytes (fewer) and accuracy (higher),
    by bytes."""
    front = set(pareto_front([(r["bytes"], r["accuracy"]) for r in records], "max"))
    return sorted((r for r in records if (r["bytes"], r["accuracy"]) in front),
                  key=lambda r: r["bytes"])


def plot(records: list[dict], path: str, title: str) -> None:
    """Accuracy (%) against bytes on disk (log x): a point per artifact, the Pareto front."""
    plt = plots._pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter
    fig, ax = plt.subplots(figsize=(7, 4.8))
    markers = {"stablehlo": "o", "tflite": "s"}
    colours, named = {}, set()
    for r in records:
        colour = colours.setdefault(r["kind"], f"C{len(colours)}")
        ax.scatter(r["bytes"], 100 * r["accuracy"], marker=markers[r["format"]], color=colour,
                   s=40, zorder=3)
        if r["name"] not in named:  # formats of one model sit side by side: one label
            named.add(r["name"])
            ax.annotate(r["name"], (r["bytes"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=6)
    front = pareto(records)
    ax.step([r["bytes"] for r in front], [100 * r["accuracy"] for r in front], where="post",
            color="k", alpha=0.6, linewidth=1, zorder=2)
    ax.scatter([r["bytes"] for r in front], [100 * r["accuracy"] for r in front], s=110,
               facecolors="none", edgecolors="k", label="Pareto front", zorder=4)
    for k, c in colours.items():
        ax.scatter([], [], color=c, label=k)
    for f, m in markers.items():
        if any(r["format"] == f for r in records):
            ax.scatter([], [], color="gray", marker=m, label=f)
    ax.set_xscale("log")
    sizes = sorted({r["bytes"] for r in records})
    ax.set_xticks([s for i, s in enumerate(sizes) if not i or s > 1.15 * sizes[i - 1]])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{plots._count(float(f'{x:.3g}'))}B"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("bytes on disk")
    ax.set_ylabel("held-out top-1 accuracy (%), in the artifact's runtime")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = [(f"Edge report of `{result['workdir']}` ({result['dataset']}, "
              f"{result['eval_examples']:,} held-out images; teacher `{result['teacher']}`), on "
              f"{result['environment']['cpu_count']} CPU cores; latency: one image per call, "
              f"{result['latency_runs']} calls; throughput at batch "
              f"{result['throughput_batch']}. Compression: the teacher's bytes / the artifact's "
              "(same format)."), ""]
    rows = []
    for r in result["records"]:
        rows.append([r["name"], r["kind"], r["format"], f"{r['params']:,}",
                     f"{r['nonzero_params']:,}", f"{r['bytes']:,}", f"{r['gzip_bytes']:,}",
                     f"{r['compression']:.2f}x", f"{100 * r['accuracy']:.2f}",
                     f"{100 * r['agreement']:.2f}", f"{r['max_abs_diff']:.1e}",
                     f"{r['latency_ms_p50']:.3f} / {r['latency_ms_p90']:.3f}",
                     f"{r['throughput']:,.0f}", "yes" if r["pareto"] else ""])
    lines += acc._table(["model", "kind", "format", "params", "nonzero", "bytes", "gzip bytes",
                         "compression", "top-1 %", "agreement %", "max |dlogit|",
                         "latency ms p50 / p90", "images/s", "Pareto"], rows)
    lines += [""] + [f"Note: {n}" for n in result["notes"]]
    lines += [f"Plot: `{os.path.basename(result['plot'])}`. Command: `{result['command']}`."]
    return "\n".join(lines) + "\n"


def report(workdir: str, out: str, *, formats=("stablehlo", "tflite"), include=(),
           latency_runs: int = 200, batch: int = 256, runtime: str = "auto",
           command: str = "", log=print) -> dict:
    """Measures every artifact (see the module doc); writes and returns the report."""
    for f in formats:
        ex.check_request(f, "dynamic", os.path.join(out, "x"))  # e.g. tflite without tf
    workdir = os.path.abspath(os.path.expanduser(workdir))
    teacher_dir, students = discover(workdir, include)
    teacher = ex.load_student(teacher_dir)
    images, labels = teacher.eval_examples(int(teacher.info.splits[
        teacher.config.data.eval_split]))
    teacher_top = np.argmax(teacher.reference_logits(images), -1)
    models, notes = [("teacher", teacher_dir, "teacher")], []
    for name, wd in students:
        config = read_config(wd)
        if config.student.get("quantization", "none") != "none" and not exports_quantized():
            notes.append(f"{name}: a quantized student, left out: this jaxdistill.export "
                         "exports no quantized student (it would write its float weights)")
            continue
        models.append((name, wd, kind(config, False)))
    records = []
    for fmt in formats:
        for name, wd, k in models:
            log(f"{name} ({k}) as {fmt}")
            records.append(measure(name, wd, k, fmt, out, images, labels, teacher_top,
                                   latency_runs=latency_runs, batch=batch, runtime=runtime))
    for r in records:
        t = next(t for t in records if t["kind"] == "teacher" and t["format"] == r["format"])
        r["compression"] = t["bytes"] / r["bytes"]
    front = {(r["name"], r["format"]) for r in pareto(records)}
    for r in records:
        r["pareto"] = (r["name"], r["format"]) in front
    os.makedirs(out, exist_ok=True)
    result = {"benchmark": "edge", "command": command, "workdir": workdir,
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "environment": acc.environment(), "dataset": teacher.info.name,
              "teacher": teacher.config.student.model, "teacher_workdir": teacher_dir,
              "eval_examples": len(labels), "latency_runs": latency_runs,
              "throughput_batch": batch, "formats": list(formats),
              "plot": os.path.join(out, "edge.png"), "notes": notes, "records": records}
    plot(records, result["plot"], f"{result['dataset']}: accuracy against bytes on disk "
         f"(teacher {result['teacher']})")
    with open(os.path.join(out, "edge.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "edge.md"), "w") as f:
        f.write(markdown(result))
    return result


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "a workdir holding finished distillation runs")
    flags.DEFINE_string("out", None, "output directory: edge.json, edge.md, edge.png, artifacts/")
    flags.DEFINE_list("formats", ["stablehlo", "tflite"], "export formats to measure")
    flags.DEFINE_list("include", [], "globs on the runs' paths relative to --workdir (default: "
                      "every finished run)")
    flags.DEFINE_integer("latency_runs", 200, "single-image calls timed per artifact")
    flags.DEFINE_integer("throughput_batch", 256, "batch size of the throughput calls")
    flags.DEFINE_enum("runtime", "auto", ["auto", "litert", "tf"], "TFLite interpreter")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for name in ("workdir", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    if not FLAGS["verbosity"].present:
        logs.quiet_library_logs()  # Orbax's per-save INFO lines would drown the progress
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        result = report(FLAGS.workdir, os.path.abspath(FLAGS.out), formats=FLAGS.formats,
                        include=FLAGS.include, latency_runs=FLAGS.latency_runs,
                        batch=FLAGS.throughput_batch, runtime=FLAGS.runtime,
                        command="python -m benchmarks.edge " + " ".join(sys.argv[1:]),
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as e:
        sys.exit(f"benchmarks.edge: error: {e}")
    print(markdown(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
