r"""Compressing a decoder LM student: quantization-aware distillation (QAD) against
post-training quantization (PTQ), and pruning + KD against pruning + CE, by held-out perplexity.

Every number comes from real jaxdistill runs of configs/lm_kd.py:runlocal (lm_teacher ->
lm_student on the standard library's sources, 0.5 ce + 0.5 kd, the logit terms chunked) at
`--steps` student steps: the teacher is trained once (seed 0, `--teacher_steps`), then per seed s
- ``kd_float``: the float student distilled from it (the config as given);
- ``ptq``: that student's final weights run quantized (`config.student.quantization`, the same
  qwix rules as QAD: the decoder's KERNELS, i.e. its attention projections and MLP), no
  training; evaluated by the QAD run's own eval (`jaxdistill.train.evaluate_other_student`);
- ``qad``: the student trained quantized with the teacher (the KD objective unchanged);
- ``qat``: the student trained quantized on cross-entropy alone (no teacher);
- ``pruned_kd`` / ``pruned_ce``: global magnitude pruning of the same kernels to
  `--sparsity` on the cubic schedule of Zhu & Gupta (2017) (dense until 10% of the run, the
  target at 50%, masks updated every 2%), with the KD objective / on cross-entropy alone.
Per run: the held-out perplexity and next-token accuracy (summary.json); over seeds: mean and
sample std, and on how many seeds QAD beats PTQ and QAT, and pruned + KD beats pruned + CE.

Runs are `benchmarks.lm_perplexity` runs: a finished run is read back, one made with another
config is refused; the quantized runs' folders are per scheme (`qad_int8`), so a rerun with
another `--scheme` reuses the teacher, the float and the pruned students.

  python -m benchmarks.compress_lm --out=/tmp/compress_lm --seeds=2 --steps=300
  python -m benchmarks.compress_lm --out=/tmp/compress_lm_quick --quick   # lm_tiny, seconds

Writes <out>/compress_lm.json and <out>/compress_lm.md (also printed).
"""

from __future__ import annotations

import copy
import os
import sys

from absl import app, flags

from benchmarks import lm_perplexity as lmp
from benchmarks.accuracy import load_config, write_report
from jaxdistill import logs, quantization
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.run_setup import prepare_run
from jaxdistill.train import evaluate_other_student

FLAGS = flags.FLAGS
METHODS = ("kd_float", "ptq", "qat", "qad", "pruned_ce", "pruned_kd")
WINS = (("qad", "ptq"), ("qad", "qat"), ("pruned_kd", "pruned_ce"))  # (better?, than)


def define_flags() -> None:
    flags.DEFINE_string("out", "", "output directory (required)")
    flags.DEFINE_integer("seeds", 2, "student seeds 0..n-1 (the teacher: seed 0)")
    flags.DEFINE_integer("steps", 300, "optimizer steps of every student run")
    flags.DEFINE_integer("teacher_steps", 300, "optimizer steps of the teacher")
    flags.DEFINE_enum("scheme", "int8", list(quantization.SCHEMES[1:]),
                      "config.student.quantization of the QAD / QAT / PTQ students")
    flags.DEFINE_float("sparsity", 0.5, "final sparsity of the pruned students")
    flags.DEFINE_bool("quick", False, "tiny mode: the lm_perplexity --quick sizes, a few steps")


def base(steps: int, teacher_steps: int, quick: bool):
    """configs/lm_kd.py:runlocal at this benchmark's budget (--quick: lm_perplexity's)."""
    c = load_config("lm_kd", "runlocal")
    if quick:
        c = lmp.quick_config(c)
    with c.unlocked():
        c.baseline = False
        c.num_steps, c.teacher.train.num_steps = steps, teacher_steps
        c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 10)
        c.log_every = max(1, steps // 4)
        c.eval_every = c.checkpoint_every = steps
        c.lm.sample_tokens = 0
    return c


def pruned(c, sparsity: float):
    """`c` with global magnitude pruning to `sparsity`, dense until 10% of the run, the target
    at 50%, masks updated every 2%."""
    c = copy.deepcopy(c)
    steps = int(c.num_steps)
    c.student.pruning.update(method="magnitude", sparsity=sparsity, scope="global",
                             start_step=steps // 10, end_step=steps // 2,
                             frequency=max(1, steps // 50))
    return c


def plan(c, seeds: int, scheme: str, sparsity: float, out: str) -> list[lmp.Run]:
    """The teacher, then per seed every trained method of the module doc (not ptq: it trains
    nothing)."""
    teacher_dir = os.path.join(out, "teacher")
    t = copy.deepcopy(c)
    t.seed = 0
    runs = [lmp.Run("teacher", 0, teacher_config(t), teacher_dir)]
    for seed in range(seeds):
        kd = copy.deepcopy(c)
        kd.seed, kd.teacher.checkpoint = seed, teacher_dir
        quantized = copy.deepcopy(kd)
        quantized.student.quantization = scheme
        configs = {"kd_float": kd, "qad": quantized, "qat": scratch_config(quantized),
                   "pruned_kd": pruned(kd, sparsity), "pruned_ce": pruned(scratch_config(kd),
                                                                          sparsity)}
        runs += [lmp.Run(name, seed, cfg, os.path.join(  # a quantized run's folder: per scheme
            out, f"seed{seed}", f"{name}_{scheme}" if name in ("qad", "qat") else name))
                 for name, cfg in configs.items()]
    return runs


def ptq_eval(qad: lmp.Run, float_dir: str) -> dict:
    """The eval of the float student in `float_dir` run quantized as `qad`'s student is."""
    return evaluate_other_student(prepare_run(qad.config), float_dir)


def _row(summary: dict) -> dict:
    return {"perplexity": summary["student_perplexity"], "accuracy": summary["student_accuracy"]}


def aggregate(per_seed: dict) -> dict:
    """{method: {perplexity: (mean, std), accuracy: (mean, std)}} and the win counts."""
    agg = {}
    for method in METHODS:
        rows = [r[method] for r in per_seed.values() if method in r]
        if rows:
            agg[method] = {m: lmp.mean_std([r[m] for r in rows]) for m in ("perplexity",
                                                                          "accuracy")}
    wins = {}
    for better, than in WINS:
        pairs = [(r[better], r[than]) for r in per_seed.values() if better in r and than in r]
        wins[f"{better}_beats_{than}"] = [sum(a["perplexity"] < b["perplexity"]
                                              for a, b in pairs), len(pairs)]
    return {"methods": agg, "wins": wins}


def markdown(result: dict) -> str:
    lines = [(f"Compressed LM students ({result['student']}, {result['steps']} steps; teacher "
              f"{result['teacher']}, held-out perplexity {result['teacher_perplexity']:.2f}); "
              f"{result['scheme']}, sparsity {result['sparsity']}; mean ± std over "
              f"{result['seeds']} seed(s)"), "",
             "| student | held-out perplexity | next-token accuracy |", "|---|---|---|"]
    for method, e in result["aggregate"]["methods"].items():
        (pm, ps), (am, as_) = e["perplexity"], e["accuracy"]
        lines.append(f"| {method} | {pm:.2f} ± {ps:.2f} | {am:.4f} ± {as_:.4f} |")
    lines.append("")
    lines += [f"- {k.replace('_', ' ')}: {w}/{n} seeds" for k, (w, n)
              in result["aggregate"]["wins"].items()]
    return "\n".join(lines) + "\n"


def run_benchmark(c, seeds: int, scheme: str, sparsity: float, out: str, header: dict,
                  log=print) -> dict:
    runs = plan(c, seeds, scheme, sparsity, out)
    os.makedirs(out, exist_ok=True)
    records, per_seed, result = {}, {}, {}
    teacher = lmp.execute(runs[0], log)["summary"]
    for run in runs[1:]:
        summary = lmp.execute(run, log)["summary"]
        records[f"seed{run.seed}/{run.name}"] = summary
        row = per_seed.setdefault(str(run.seed), {})
        row[run.name] = _row(summary)
        if run.name == "qad":  # the float student of this seed has finished before it
            ptq = ptq_eval(run, os.path.join(out, f"seed{run.seed}", "kd_float"))
            row["ptq"] = {"perplexity": ptq["perplexity"], "accuracy": ptq["accuracy"]}
        log(f"seed {run.seed} {run.name}: perplexity {summary['student_perplexity']:.3f}")
        result = {**header, "student": c.student.model, "teacher": c.teacher.model,
                  "teacher_perplexity": teacher["student_perplexity"], "teacher_run": teacher,
                  "runs": records, "per_seed": per_seed, "aggregate": aggregate(per_seed)}
        write_report(out, "compress_lm", result)
    write_report(out, "compress_lm", result, markdown(result))
    return result


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    if not FLAGS["verbosity"].present:
        logs.quiet_library_logs()
    steps, t_steps = (4, 8) if FLAGS.quick else (FLAGS.steps, FLAGS.teacher_steps)
    c = base(steps, t_steps, FLAGS.quick)
    header = {"command": "python -m benchmarks.compress_lm " + " ".join(sys.argv[1:]),
              "steps": steps, "teacher_steps": t_steps, "seeds": FLAGS.seeds,
              "scheme": FLAGS.scheme, "sparsity": FLAGS.sparsity,
              "environment": lmp.environment()}
    result = run_benchmark(c, FLAGS.seeds, FLAGS.scheme, FLAGS.sparsity,
                           os.path.abspath(FLAGS.out), header,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
