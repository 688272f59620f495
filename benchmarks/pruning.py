r"""Pruning with distillation: does KD from the dense teacher recover a pruned student?

configs/mnist_kd.py on mnist5k (Hinton's MNIST pair: teacher 784-1200-1200-10, student
784-800-800-10): the teacher is trained once (seed 0); then, per seed and per target sparsity,
the student is pruned by global magnitude pruning on the cubic schedule of Zhu & Gupta (2017)
(`config.student.pruning`: dense until 10% of the run, the final sparsity at 50%, masks updated
every 2% of the run, fine-tuned with the masks fixed after) and trained
  - `kd`: with the recipe's objective (0.1 ce + 0.9 kd at T = 20) from the dense teacher;
  - `ce`: on the labels alone (the same student, data, optimizer and schedule).
Sparsity 0 is the dense reference pair. Per run: the final top-1 accuracy on the 1,000 test
digits, the agreement with the teacher, and the sparsity measured on the restored student
(the fraction of its kernels' weights that are exactly zero). Per sparsity, over the seeds:
mean ± sample std of each, and KD's gain over CE per seed (the number of seeds it wins).

Runs are `benchmarks.accuracy` runs (`measure`): a finished run is reused, a run directory made
with another config is refused.

  python -m benchmarks.pruning --out=/tmp/pruning                      # 3 seeds, 300 steps
  python -m benchmarks.pruning --out=/tmp/pruning --seeds=5 --steps=2000 --teacher_steps=3000
  python -m benchmarks.pruning --quick --out=/tmp/pruning_quick         # digits, ~2 min

Writes <out>/pruning.json and <out>/pruning.md.
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
import time

import numpy as np
from absl import app, flags

from jaxdistill import checkpoint, logs, pruning
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.run_setup import prepare_run

if __package__:
    from benchmarks import accuracy as acc
else:
    import accuracy as acc

FLAGS = flags.FLAGS
SUITE = "pruning"


def define_flags() -> None:
    flags.DEFINE_string("out", "", "output directory (required): pruning.json, pruning.md and "
                        "the runs under <out>/runs/")
    flags.DEFINE_integer("seeds", 3, "number of seeds; seed i = 0..n-1")
    flags.DEFINE_list("sparsities", ["0.5", "0.8", "0.9"], "final sparsities (0 is added: the "
                      "dense reference)")
    flags.DEFINE_integer("steps", 300, "student training steps")
    flags.DEFINE_integer("teacher_steps", 2000, "teacher training steps")
    flags.DEFINE_enum("scope", "global", list(pruning.SCOPES), "magnitude threshold scope")
    flags.DEFINE_bool("quick", False, "digits, a few dozen steps, 2 seeds")
    flags.DEFINE_string("compilation_cache", "auto", "JAX compilation cache ('auto' = "
                        "<out>/jax_cache, '' = off)")


def base(steps: int, teacher_steps: int, quick: bool):
    """configs/mnist_kd.py with the step budgets of this benchmark."""
    c = acc.load_config("mnist_kd")
    if quick:
        c.data.name, c.data.augment_pixels = "digits", 1
        c.batch_size, c.eval_batch_size = 64, 120
    c.baseline = False
    c.teacher.train.num_steps = teacher_steps
    c.num_steps = steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 10)
    c.log_every = max(1, steps // 4)
    c.eval_every = c.checkpoint_every = steps
    return c


def pruned(c, sparsity: float, scope: str):
    """`c` pruned to `sparsity`: dense until 10% of the run, the target at 50%."""
    c = copy.deepcopy(c)
    if sparsity > 0:
        p = c.student.pruning
        p.method, p.sparsity, p.scope = "magnitude", sparsity, scope
        p.start_step, p.end_step = c.num_steps // 10, c.num_steps // 2
        p.frequency = max(1, c.num_steps // 50)
    return c


def plan(out: str, seeds, sparsities, *, steps: int, teacher_steps: int, scope: str,
         quick: bool) -> list[acc.Run]:
    """The teacher, then per seed and sparsity the kd and ce students."""
    root = os.path.join(out, "runs")
    c = base(steps, teacher_steps, quick)
    tc = teacher_config(c)  # its cadence and warm-up from its own steps, not the students'
    tc.log_every, tc.eval_every = teacher_steps // 8, teacher_steps // 2
    tc.checkpoint_every = teacher_steps // 2
    tc.optimizer.warmup_steps = min(100, teacher_steps // 10)
    teacher = acc.Run(SUITE, "teacher", "teacher", 0, acc._locked(tc),
                      os.path.join(root, "teacher"))
    runs = [teacher]
    for seed in seeds:
        for s in sparsities:
            cs = pruned(acc._finish(copy.deepcopy(c), seed, 1.0, ""), s, scope)
            tag = f"s{round(100 * s)}"
            kd = acc._distilled(cs, teacher)
            runs.append(acc.Run(SUITE, f"kd_{tag}", "student", seed, kd,
                                os.path.join(root, f"kd_{tag}", f"seed{seed}"), teacher))
            runs.append(acc.Run(SUITE, f"ce_{tag}", "student", seed,
                                acc._locked(scratch_config(cs)),
                                os.path.join(root, f"ce_{tag}", f"seed{seed}"), teacher))
    return runs


def measured_sparsity(config, workdir: str) -> float:
    """The fraction of the prunable weights of the run's final student that are exactly 0
    (the pruned kernels of `config`, or the kernels for a dense run)."""
    setup = prepare_run(config)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    params = checkpoint.load_teacher(workdir, abstract, field=workdir)["params"]
    names = tuple(config.student.pruning.params)
    kernels = [np.asarray(w) for w in pruning.prunable(params, names).values()]
    return float(sum((w == 0).sum() for w in kernels) / sum(w.size for w in kernels))


def summarize(records: list[dict], sparsities) -> list[dict]:
    """Per sparsity: kd and ce accuracy, agreement and sparsity (mean ± std), and KD's gain."""
    rows = []
    for s in sparsities:
        tag = f"s{round(100 * s)}"
        row = {"target_sparsity": s}
        by = {}
        for kind in ("kd", "ce"):
            recs = {r["seed"]: r for r in records if r["name"] == f"{kind}_{tag}"}
            by[kind] = recs
            for field in ("last_accuracy", "agreement", "sparsity"):
                row[f"{kind}_{field}_mean"], row[f"{kind}_{field}_std"] = acc.mean_std(
                    [r[field] for r in recs.values()])
            row[f"{kind}_n"] = len(recs)
        gains = [by["kd"][k]["last_accuracy"] - by["ce"][k]["last_accuracy"]
                 for k in sorted(set(by["kd"]) & set(by["ce"]))]
        row["kd_gain_per_seed"] = gains
        row["kd_gain_mean"], row["kd_gain_std"] = acc.mean_std(gains)
        row["kd_wins"] = int(sum(g > 0 for g in gains))
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    t = result["teacher"]
    n = len(result["seeds"])
    lines = [f"## Pruning with distillation on {result['dataset']}", "",
             (f"Teacher `{t['model']}` (seed 0): {acc._pct(t['last_accuracy'])}% top-1. Student "
              f"`{result['student_model']}`, {result['steps']} steps, global magnitude pruning "
              f"(scope {result['scope']}) on the cubic schedule (Zhu & Gupta 2017). Top-1 and "
              f"agreement with the teacher in %, mean ± std over up to {n} seeds (KD wins: of the "
              "seeds with both runs); sparsity measured on "
              "the restored students (zero kernel weights)."), ""]
    rows = []
    for r in result["rows"]:
        kd, ce, g = r["kd_n"], r["ce_n"], len(r["kd_gain_per_seed"])
        rows.append([f"{100 * r['target_sparsity']:.0f}%",
                     f"{100 * r['kd_sparsity_mean']:.1f}%" if r["kd_sparsity_mean"] is not None
                     else "-",
                     acc._pct(r["ce_last_accuracy_mean"], r["ce_last_accuracy_std"], n=ce),
                     acc._pct(r["kd_last_accuracy_mean"], r["kd_last_accuracy_std"], n=kd),
                     acc._pct(r["kd_gain_mean"], r["kd_gain_std"], n=g), f"{r['kd_wins']}/{g}",
                     acc._pct(r["ce_agreement_mean"], r["ce_agreement_std"], n=ce),
                     acc._pct(r["kd_agreement_mean"], r["kd_agreement_std"], n=kd)])
    lines += acc._table(["target", "measured", "pruned + CE", "pruned + KD", "KD gain (pts)",
                         "KD wins", "agree CE", "agree KD"], rows)
    lines += ["", f"Command: `{result['command']}` ({result['wall_s']:.0f} s)."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> None:
    acc.write_report(out, "pruning", result, markdown(result))


def run(runs: list[acc.Run], sparsities, out: str, *, command: str, flags_used: dict,
        log=print) -> dict:
    """Trains and measures every run; writes and returns the result."""
    acc.validate([acc.Suite(SUITE, SUITE, "configs/mnist_kd.py", runs,
                            sorted({r.name for r in runs}), True)])
    start, records, predictions = time.perf_counter(), [], {}
    teacher = runs[0]
    result = {"benchmark": "pruning", "command": command, "flags": flags_used,
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "environment": acc.environment(), "dataset": teacher.config.data.name,
              "student_model": runs[-1].config.student.model, "steps": runs[-1].config.num_steps,
              "scope": flags_used["scope"], "seeds": sorted({r.seed for r in runs[1:]})}
    for i, r in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {r.name} seed {r.seed} -> {r.workdir}")
        rec = acc.measure(r, predictions, log=log)
        rec["sparsity"] = measured_sparsity(r.config, r.workdir) if r.role == "student" else None
        rec["target_sparsity"] = float(r.config.student.pruning.sparsity)
        records.append(rec)
        log(f"[{i}/{len(runs)}] {r.name} seed {r.seed}: top-1 {rec['last_accuracy']:.4f}"
            + (f" sparsity {rec['sparsity']:.3f} agreement {rec['agreement']:.4f}"
               if rec["sparsity"] is not None else ""))
        result.update(teacher=records[0], runs=records, rows=summarize(records, sparsities),
                      wall_s=time.perf_counter() - start)
        write(result, out)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out=DIR is required")
    out = os.path.abspath(FLAGS.out)
    if not FLAGS["verbosity"].present:
        logs.quiet_library_logs()  # Orbax's per-save INFO lines would drown the progress
    if FLAGS.compilation_cache:
        acc.enable_compilation_cache(os.path.join(out, "jax_cache")
                                     if FLAGS.compilation_cache == "auto"
                                     else FLAGS.compilation_cache)
    quick = FLAGS.quick
    seeds = range(2 if quick and not FLAGS["seeds"].present else FLAGS.seeds)
    steps = 60 if quick and not FLAGS["steps"].present else FLAGS.steps
    teacher_steps = (300 if quick and not FLAGS["teacher_steps"].present
                     else FLAGS.teacher_steps)
    try:
        sparsities = [0.0] + sorted({float(s) for s in FLAGS.sparsities} - {0.0})
    except ValueError:
        raise app.UsageError(f"--sparsities: numbers in [0, 1), got {FLAGS.sparsities}") from None

    def log(line):
        print(line, file=sys.stderr, flush=True)
    flags_used = {"seeds": len(seeds), "sparsities": sparsities, "steps": steps,
                  "teacher_steps": teacher_steps, "scope": FLAGS.scope, "quick": quick}
    try:
        runs = plan(out, seeds, sparsities, steps=steps, teacher_steps=teacher_steps,
                    scope=FLAGS.scope, quick=quick)
        result = run(runs, sparsities, out, flags_used=flags_used, log=log,
                     command="python -m benchmarks.pruning " + " ".join(sys.argv[1:]))
    except ValueError as e:
        sys.exit(f"benchmarks.pruning: error: {e}")
    print(markdown(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
