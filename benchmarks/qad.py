r"""Quantization-aware distillation (QAD) against its two baselines, on mnist5k, by seed.

Every number comes from real jaxdistill runs (`jaxdistill.train.train_and_evaluate`) of
configs/mnist_kd.py's recipe (Hinton et al. 2015: ce 0.1 + kd 0.9 at T = 20, the same
optimizer) at a reduced budget: one float teacher (mlp_teacher, config.seed = 0, the config of
`jaxdistill.experiment.teacher_config`) into `<out>/teacher`; then for each seed s and each
quantization scheme q (`config.student.quantization`):

- ``ptq``: the distilled FLOAT student (`<out>/seed<s>/kd_float`), quantized after training
  (post-training quantization: the same qwix rules as QAD, on its final weights, no training);
- ``qat``: the student trained quantized on labels alone (ce only, no teacher: QAT);
- ``qad``: the student trained quantized with the teacher (the KD objective unchanged: QAD).

Accuracy is top-1 on the held-out split (mnist5k test, 1,000 digits): the runs' own eval
(summary.json) for qat / qad / the float student, and for ptq the quantized forward pass of the
float student's final checkpoint on the same split (`jaxdistill.export.Student`; the float
student's accuracy computed that way must equal its summary's). Over seeds: mean and sample
std (ddof = 1), and on how many seeds QAD beats each baseline.

Output in `--out`: qad.json (flags, every run's summary, per-seed accuracies, the aggregate;
rewritten after each run) and qad.md (the Markdown table, also printed). Finished runs
(summary.json at config.num_steps) are read back, not retrained.

Usage (from the repository root):
  python -m benchmarks.qad --out=/tmp/qad_bench                       # 3 seeds, int8 + int4
  python -m benchmarks.qad --out=/tmp/qad_bench --steps=1500 --teacher_steps=1500
  python -m benchmarks.qad --out=/tmp/qad_quick --quick                # digits, a few steps
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.accuracy import load_config, write_report
from jaxdistill import export, quantization
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.train import train_and_evaluate

FLAGS = flags.FLAGS
METHODS = ("ptq", "qat", "qad")


def define_flags() -> None:
    flags.DEFINE_string("out", "", "output directory (required)")
    flags.DEFINE_integer("seeds", 3, "student seeds 0..n-1 (the teacher: seed 0)")
    flags.DEFINE_integer("steps", 1500, "optimizer steps of every student run")
    flags.DEFINE_integer("teacher_steps", 1500, "optimizer steps of the teacher")
    flags.DEFINE_list("schemes", ["int8", "int4_weights"], "config.student.quantization schemes")
    flags.DEFINE_string("student_widths", "128,128", "hidden widths of the MLP student")
    flags.DEFINE_bool("quick", False, "tiny mode: digits, mlp (32,) students, a few steps")


def base(steps: int, teacher_steps: int, widths: tuple[int, ...], quick: bool
         ) -> ml_collections.ConfigDict:
    """configs/mnist_kd.py at this benchmark's budget (see the module doc)."""
    c = load_config("mnist_kd")
    c.baseline = False
    c.student.model, c.student.kwargs = "mlp", ml_collections.ConfigDict({"widths": widths})
    c.num_steps, c.teacher.train.num_steps = steps, teacher_steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 10)
    c.eval_every = c.checkpoint_every = c.log_every = steps
    if quick:
        c.data.name, c.data.augment_pixels = "digits", 1
        c.teacher.model, c.teacher.kwargs = "mlp", ml_collections.ConfigDict({"widths": (64,)})
        c.batch_size, c.eval_batch_size = 64, 120
    return c


def plan(c, seeds: int, schemes, out: str) -> tuple[tuple, list[tuple]]:
    """(teacher run, [(seed, name, config, workdir)]): every run, as (config, workdir)."""
    teacher_dir = os.path.join(out, "teacher")
    t_cfg = teacher_config(c)
    t_cfg.eval_every = t_cfg.checkpoint_every = t_cfg.log_every = t_cfg.num_steps
    runs = []
    for seed in range(seeds):
        kd = copy.deepcopy(c)
        kd.seed, kd.teacher.checkpoint = seed, teacher_dir
        for scheme in (quantization.NONE, *schemes):
            for name, cfg in ((f"kd_{scheme}", kd), (f"ce_{scheme}", scratch_config(kd))):
                if name == "ce_none":
                    continue
                cfg = copy.deepcopy(cfg)
                cfg.student.quantization = scheme
                runs.append((seed, name, cfg, os.path.join(out, f"seed{seed}", name)))
    return (t_cfg, teacher_dir), runs


def execute(config, workdir: str) -> dict:
    """The run's summary: read back when finished, else trained (or resumed)."""
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        if summary.get("steps") == config.num_steps:
            return summary
    return train_and_evaluate(config, workdir)


def ptq_accuracy(workdir: str, scheme: str, expected_float: float) -> float:
    """Held-out accuracy of the float student in `workdir` quantized after training."""
    student = export.load_student(workdir)
    images, labels = student.eval_examples(10**9)
    float_acc = float(np.mean(student.reference_logits(images).argmax(-1) == labels))
    if abs(float_acc - expected_float) > 1e-9:
        raise RuntimeError(f"{workdir}: float accuracy {float_acc} here but {expected_float} in "
                           "its summary: the PTQ evaluation is not the run's eval")
    quantized = quantization.qat_model(student.model(), scheme, student.image_shape)
    ptq = dataclasses.replace(student, graphdef=nnx.graphdef(quantized), quantization=scheme)
    return float(np.mean(ptq.reference_logits(images).argmax(-1) == labels))


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}


def aggregate(rows: dict, schemes) -> dict:
    """{scheme: {method: {mean, std, values}, wins over each baseline}}."""
    agg = {}
    for scheme in schemes:
        entry = {}
        for method in METHODS:
            values = [r[scheme][method] for r in rows.values() if method in r.get(scheme, {})]
            if values:
                entry[method] = _mean_std(values)
        entry["float_kd"] = _mean_std([r["float_kd"] for r in rows.values() if "float_kd" in r])
        complete = [r[scheme] for r in rows.values() if set(METHODS) <= set(r.get(scheme, {}))]
        for baseline in ("ptq", "qat"):
            entry[f"qad_beats_{baseline}"] = sum(r["qad"] > r[baseline] for r in complete)
        entry["seeds"] = len(complete)
        agg[scheme] = entry
    return agg


def markdown(result: dict) -> str:
    title = (f"QAD on {result['dataset']} (student mlp {result['student_widths']}, "
             f"{result['steps']} steps; teacher {result['teacher_model']}, accuracy "
             f"{result['teacher_accuracy']:.4f}); held-out top-1, mean ± std over seeds")
    header = ("| scheme | float KD student | PTQ of it | QAT (ce only) | QAD (kd) | QAD > PTQ "
              "| QAD > QAT |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|"]

    def cell(e, m):
        return f"{e[m]['mean']:.4f} ± {e[m]['std']:.4f}" if m in e else "-"
    for scheme, e in result["aggregate"].items():
        lines.append(f"| {scheme} | {cell(e, 'float_kd')} | {cell(e, 'ptq')} | "
                     f"{cell(e, 'qat')} | {cell(e, 'qad')} | {e['qad_beats_ptq']}/{e['seeds']} "
                     f"| {e['qad_beats_qat']}/{e['seeds']} |")
    lines += ["", "Per seed (ptq / qat / qad):"]
    for seed, row in result["per_seed"].items():
        parts = [f"{s}: " + " / ".join(f"{row[s][m]:.4f}" for m in METHODS if m in row[s])
                 for s in result["aggregate"] if s in row]
        lines.append(f"- seed {seed} (float KD {row['float_kd']:.4f}): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def run_benchmark(c, seeds: int, schemes, out: str, header: dict, log=print) -> dict:
    (t_cfg, teacher_dir), runs = plan(c, seeds, schemes, out)
    os.makedirs(out, exist_ok=True)
    teacher = execute(t_cfg, teacher_dir)
    summaries, rows = {}, {}
    result = {}
    for seed, name, cfg, workdir in runs:
        summary = execute(cfg, workdir)
        summaries[f"seed{seed}/{name}"] = summary
        row = rows.setdefault(str(seed), {})
        kind, scheme = name.split("_", 1)
        acc = summary["student_accuracy"]
        if scheme == quantization.NONE:
            row["float_kd"] = acc
            for s in schemes:
                row.setdefault(s, {})["ptq"] = ptq_accuracy(workdir, s, acc)
        else:
            row.setdefault(scheme, {})["qad" if kind == "kd" else "qat"] = acc
        log(f"seed {seed} {name}: accuracy {acc:.4f}")
        result = {**header, "dataset": c.data.name, "teacher_model": t_cfg.student.model,
                  "teacher_accuracy": teacher["student_accuracy"], "teacher": teacher,
                  "runs": summaries, "per_seed": rows, "aggregate": aggregate(rows, schemes)}
        write_report(out, "qad", result)
    write_report(out, "qad", result, markdown(result))
    return result


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    for scheme in FLAGS.schemes:
        quantization.check_scheme(scheme, "--schemes")
    widths = tuple(int(w) for w in FLAGS.student_widths.split(","))
    steps, t_steps = (20, 40) if FLAGS.quick else (FLAGS.steps, FLAGS.teacher_steps)
    c = base(steps, t_steps, widths, FLAGS.quick)
    header = {"flags": {k: FLAGS[k].value for k in ("seeds", "steps", "teacher_steps", "schemes",
                                                       "student_widths", "quick")},
              "steps": steps, "student_widths": list(widths)}
    result = run_benchmark(c, FLAGS.seeds, FLAGS.schemes, FLAGS.out, header)
    print(markdown(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
