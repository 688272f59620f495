r"""Student accuracy of the distillation methods: teacher, student from scratch, distilled student.

Every number comes from real jaxdistill runs: each run's config goes through
`jaxdistill.train.train_and_evaluate` (the teacher and scratch stages are the configs of
`jaxdistill.experiment.teacher_config` / `scratch_config`), into `<out>/runs/...`.

Suites (`--suite`):
  methods   configs/mnist_methods.py on mnist5k (4,000 train / 1,000 test): the CNN teacher is
            trained ONCE (seed 0) and shared by every method and seed; then, for each seed, the
            student from scratch (ce only) and the student with each method (`--methods`).
  hinton    configs/mnist_kd.py, Hinton et al. (2015)'s MNIST experiment on mnist5k (teacher
            784-1200-1200-10 with dropout and +-2 pixel jitter, student 784-800-800-10 without
            regularisation, distilled at T = 20). Each seed is the whole experiment (its own
            teacher, scratch and distilled student), beside the paper's full-MNIST numbers.
  cifar100  configs/cifar100_teacher.py (resnet32x4, trained once, seed 0) and
            configs/cifar100_methods.py (resnet8x4 students), beside the published CRD/DKD
            numbers. Needs TFDS `cifar100` prepared in `--data_dir` and an accelerator
            (see benchmarks/cifar100.sh).
  all       methods, then hinton.
Where a suite's teacher trains with an augmentation its students do not (the +-2 pixel jitter of
the mnist5k suites), each seed also trains `scratch_<augment>`: the scratch student with the
teacher's augmentation, so the tables show how much of the teacher-student gap is augmentation.

What is measured, per run: top-1 accuracy at the last eval and at the best eval (from the run's
metrics.jsonl 'eval' records; published tables differ on which they report), and, from the
final student restored from its checkpoint and run over the eval split: per-class accuracy,
test errors, and top-1 agreement with its teacher. Per model and suite, over the seeds: mean
and sample standard deviation (ddof=1; 0 for one seed), the fraction of the teacher-student
gap closed, (method - scratch) / (teacher - scratch), per seed and of the means (undefined where
the teacher is not above the scratch student; for `scratch_<augment>` too), and the classes the
student loses most relative to its teacher. Accuracies are fractions in the JSON and percentages in the tables.

Output in `--out`: accuracy.json (flags, environment, every run record and every summary row;
rewritten after each run, so an interrupted benchmark keeps what it finished), accuracy.md
(Markdown tables) and PNG plots (benchmarks/plots.py): accuracy per model with error bars,
accuracy against parameter count, per-class accuracy of teacher, scratch student(s) and the
best distilled student side by side, the Hinton errors beside the paper, and throughput per mode
from `--throughput_json` (a benchmarks/throughput.py output; skipped, and said so, without it).
Run directories are reused: a finished run is restored and re-measured, not retrained, and a
run directory made with a different config is refused (use a fresh --out).

This file is the command; the work is in accuracy_plan.py (the suites' runs and configs),
accuracy_run.py (training, restoring, measuring), accuracy_stats.py (over seeds) and
accuracy_report.py (JSON, Markdown, plots via plots.py).

Usage (from the repository root):
  python -m benchmarks.accuracy --quick --out=/tmp/acc_quick     # digits, 2 seeds, ~1 min on CPU
  python -m benchmarks.accuracy --suite=methods --seeds=1 --out=/tmp/acc       # every method
  python -m benchmarks.accuracy --suite=hinton --seeds=3 --out=/tmp/acc_hinton
  python -m benchmarks.accuracy --suite=methods --methods=kd,dkd,crd --steps_scale=0.5 --out=DIR
  python -m benchmarks.accuracy --report_only --out=DIR --throughput_json=/tmp/bench/throughput.json
  benchmarks/cifar100.sh /path/to/tensorflow_datasets OUTDIR    # GPU, hours per run
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

if not __package__:  # python benchmarks/accuracy.py: its modules are the package's
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.accuracy_plan import (
    CIFAR100_METHODS,
    QUICK_METHODS,
    QUICK_SEEDS,
    SUITES,
    Run,
    Suite,
    _distilled,
    _finish,
    _locked,
    build_suites,
    load_config,
    validate,
)
from benchmarks.accuracy_report import _pct, _table, finish_report, markdown, write_report
from benchmarks.accuracy_run import (
    enable_compilation_cache,
    environment,
    measure,
    run_suites,
)
from benchmarks.accuracy_stats import mean_std
from jaxdistill import logs

# what the benchmarks built on this one (edge, pruning, qad, lm_*) import from it
__all__ = ["Run", "Suite", "_distilled", "_finish", "_locked", "_pct", "_table", "enable_compilation_cache", "environment", "load_config", "mean_std",
           "measure", "validate", "write_report"]

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so that importing this
    module next to another benchmark defines nothing twice)."""
    flags.DEFINE_enum("suite", "all", SUITES, "which suite to run (all = methods + hinton)")
    flags.DEFINE_list("methods", None, "methods of the methods/cifar100 suites (default: "
                      "every method of jaxdistill.recipes.METHODS; cifar100: "
                      f"{','.join(CIFAR100_METHODS)}; --quick: {','.join(QUICK_METHODS)})")
    flags.DEFINE_integer("seeds", 5, "number of seeds; seed i = 0..n-1")
    flags.DEFINE_bool("quick", False, f"tiny mode: digits, a few dozen steps, {QUICK_SEEDS} "
                      f"seeds, methods {','.join(QUICK_METHODS)} (about a minute on 2 CPU "
                      "cores); flags given explicitly still apply")
    flags.DEFINE_string("out", "", "output directory (required): accuracy.json, accuracy.md, "
                        "the plots, and the runs' work dirs under <out>/runs/")
    flags.DEFINE_float("steps_scale", 1.0, "multiplies every run's step counts (training, "
                       "teacher training, eval/checkpoint/log intervals, warm-ups); < 1 shrinks "
                       "the runs")
    flags.DEFINE_string("data_dir", "", "TFDS data dir for every run (cifar100: where it is "
                        "prepared); '' = the configs' default")
    flags.DEFINE_string("teacher_checkpoint", "", "methods/cifar100: use this finished teacher "
                        "run (its workdir) instead of training the teacher")
    flags.DEFINE_string("throughput_json", "", "a benchmarks/throughput.py throughput.json to "
                        "plot throughput per mode from; without it that plot is skipped")
    flags.DEFINE_string("compilation_cache", "auto", "JAX persistent compilation cache directory "
                        "(runs that differ only in seed reuse their compiled steps); 'auto' = "
                        "<out>/jax_cache, '' = off")
    flags.DEFINE_bool("report_only", False, "rewrite accuracy.md and the plots from "
                      "<out>/accuracy.json without running anything")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out=DIR is required (results and the runs' work dirs go there)")
    out = os.path.abspath(FLAGS.out)
    if not FLAGS["verbosity"].present:
        logs.quiet_library_logs()  # Orbax's per-save INFO lines would drown the progress
    if FLAGS.compilation_cache and not FLAGS.report_only:
        enable_compilation_cache(os.path.join(out, "jax_cache")
                                 if FLAGS.compilation_cache == "auto" else FLAGS.compilation_cache)

    def log(line):
        print(line, file=sys.stderr, flush=True)
    try:
        if FLAGS.report_only:
            with open(os.path.join(out, "accuracy.json")) as f:
                result = json.load(f)
            result = finish_report(result, out, FLAGS.throughput_json, log=log)
        else:
            seeds = FLAGS.seeds if (FLAGS["seeds"].present or not FLAGS.quick) else QUICK_SEEDS
            suites = build_suites(FLAGS.suite, FLAGS.methods, seeds, quick=FLAGS.quick,
                                  scale=FLAGS.steps_scale, out=out, data_dir=FLAGS.data_dir,
                                  teacher_checkpoint=FLAGS.teacher_checkpoint)
            flags_used = {"suite": FLAGS.suite, "methods": FLAGS.methods, "seeds": seeds,
                          "quick": FLAGS.quick, "steps_scale": FLAGS.steps_scale,
                          "data_dir": FLAGS.data_dir,
                          "teacher_checkpoint": FLAGS.teacher_checkpoint,
                          "throughput_json": FLAGS.throughput_json,
                          "compilation_cache": FLAGS.compilation_cache}
            command = "python -m benchmarks.accuracy " + " ".join(sys.argv[1:])
            result = run_suites(suites, out, flags_used=flags_used, command=command,
                                throughput_json=FLAGS.throughput_json, log=log)
    except ValueError as e:
        sys.exit(f"benchmarks.accuracy: error: {e}")
    log(f"wrote {os.path.join(out, 'accuracy.json')} and accuracy.md")
    print(markdown(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
