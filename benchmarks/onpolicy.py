r"""On-policy (GKD) vs supervised KD vs sequence-level KD students of one teacher, by seed.

Every number comes from real runs of configs/lm_onpolicy.py (its argument picks the mode): the
teacher is trained once (seed 0, `experiment.teacher_config`) into `<out>/teacher`; then for
each seed s and each mode (supervised: lambda 0 on the dataset's completions; seqkd: the
teacher's greedy completions, generated once; onpolicy: lambda 1) the
student is trained with `train.train_and_evaluate` into `<out>/seed<s>/<mode>` (a finished run
is read back, an unfinished one resumes). Measured on the held-out functions:

- ppl: the student's perplexity of the real held-out completions (the run's eval);
- kl: the mean per-token KL(teacher || student) on those completions;
- teacher_samples_ppl: the student's perplexity of the teacher's greedy completions of the
  held-out prompts (the seq-KD dataset's test split);
- own_samples_teacher_nll: the teacher's per-token NLL of the student's own completions of the
  held-out prompts (temperature 1, one fixed key): how plausible what the student generates is
  to the teacher, the quantity on-policy training targets.

Mean and sample std (ddof=1) over seeds go to `<out>/onpolicy.json` and `onpolicy.md`.

  python -m benchmarks.onpolicy --seeds=3 --out=/tmp/onpolicy_bench
  python -m benchmarks.onpolicy --seeds=2 --runlocal --out=/tmp/onpolicy_local
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from jaxdistill import checkpoint, data, logs, onpolicy, seqkd
from jaxdistill.experiment import teacher_config
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import forward
from jaxdistill.train import evaluate_other_student, load_teachers, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("supervised", "seqkd", "onpolicy")  # configs/lm_onpolicy.py also has "mixed"
METRICS = ("ppl", "kl", "teacher_samples_ppl", "own_samples_teacher_nll")

FLAGS = flags.FLAGS


def get_config(arg: str):
    """configs/lm_onpolicy.py's `get_config(arg)`."""
    spec = importlib.util.spec_from_file_location(
        "lm_onpolicy", os.path.join(ROOT, "configs", "lm_onpolicy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def own_samples_teacher_nll(setup, student_params, teacher, seed: int = 0) -> float:
    """The teacher's mean NLL per generated token of the student's temperature-1 completions
    of the eval split's prompts (batch n keyed by fold_in(key(seed), n))."""
    ctx, meta = setup.ctx, setup.info.metadata
    total = count = 0.0
    for n, batch in enumerate(data.make_eval_iterator(
            setup.info, split=setup.config.data.eval_split, reader="grain",
            global_batch_size=setup.config.eval_batch_size, sharding=setup.batch_sharding)):
        sample = onpolicy.rollout(ctx.student_def, student_params, batch,
                                  jax.random.fold_in(jax.random.key(seed), n),
                                  onpolicy.Sampling(), eos_id=meta["eot_id"],
                                  pad_id=meta["pad_id"])
        rows = onpolicy.completion_batch(batch, sample)
        inputs = ctx.task.inputs(rows, None, train=False)
        logits, _, _ = forward(ctx.teacher_def, teacher["params"], teacher["batch_stats"],
                               inputs.x, train=False, **inputs.kwargs)
        nll = -jax.numpy.take_along_axis(jax.nn.log_softmax(logits), rows["targets"][..., None],
                                         -1)[..., 0]
        w = rows["weights"] * batch["mask"][:, None]
        total += float((nll * w).sum())
        count += float(w.sum())
    return total / max(count, 1.0)


def measure(config, workdir: str, teacher_samples) -> dict:
    """The held-out metrics of the finished student in `workdir` (module doc)."""
    summary = train_and_evaluate(config, workdir)
    setup = prepare_run(config)
    teacher = load_teachers(setup)
    on_samples = evaluate_other_student(dataclasses.replace(setup, info=teacher_samples),
                                        workdir)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    student = checkpoint.load_teacher(workdir, abstract, field=f"the run in {workdir}")
    return {"ppl": summary["student_perplexity"], "kl": summary["kl"],
            "teacher_samples_ppl": on_samples["perplexity"],
            "own_samples_teacher_nll": own_samples_teacher_nll(setup, student["params"],
                                                               teacher)}


def aggregate(rows: list[dict]) -> dict:
    """{mode: {metric: (mean, std)}} over the seeds' rows."""
    out = {}
    for mode in MODES:
        values = {m: [r[mode][m] for r in rows if mode in r] for m in METRICS}
        out[mode] = {m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
                     for m, v in values.items() if v}
    return out


def markdown(result: dict) -> str:
    head = ("| mode | held-out ppl | KL(T‖S) | ppl of teacher samples | teacher NLL of own "
            "samples |\n|---|---|---|---|---|\n")
    lines = [f"| {mode} | " + " | ".join(f"{a[m][0]:.3f} ± {a[m][1]:.3f}" for m in METRICS)
             + " |" for mode, a in result["aggregate"].items() if a]
    return (head + "\n".join(lines) + f"\n\n{result['seeds']} seeds; teacher held-out ppl "
            f"{result['teacher_perplexity']:.3f}\n")


def run(seeds: int, out: str, runlocal: bool) -> dict:
    """Trains and measures everything (module doc); returns and writes the result."""
    suffix = ",runlocal" if runlocal else ""
    out = os.path.abspath(out)
    teacher_dir = os.path.join(out, "teacher")
    base = get_config("supervised" + suffix)
    teacher_summary = train_and_evaluate(teacher_config(base), teacher_dir)
    rows, times = [], {}
    for seed in range(seeds):
        row = {}
        for mode in MODES:
            config = get_config(mode + suffix)
            config.seed = seed
            config.teacher.checkpoint = teacher_dir
            config.lock()
            if not seed and mode == MODES[0]:
                setup = prepare_run(copy.deepcopy(config))
                with_seqkd = copy.deepcopy(config)
                with with_seqkd.unlocked():
                    with_seqkd.seqkd.enabled = True
                samples = seqkd.build(with_seqkd, setup.info, setup.ctx.teacher_def,
                                      load_teachers(setup))
            start = time.perf_counter()
            row[mode] = measure(config, os.path.join(out, f"seed{seed}", mode), samples)
            times[f"seed{seed}/{mode}"] = time.perf_counter() - start
            print(seed, mode, row[mode], flush=True)
        rows.append(row)
    result = {"config": f"configs/lm_onpolicy.py{suffix}", "seeds": seeds, "per_seed": rows,
              "aggregate": aggregate(rows), "seconds": times,
              "teacher_perplexity": teacher_summary["student_perplexity"]}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "onpolicy.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "onpolicy.md"), "w") as f:
        f.write(markdown(result))
    return result


def main(argv):
    del argv
    logs.quiet_library_logs()  # the runs' progress lines still print
    result = run(FLAGS.seeds, FLAGS.out, FLAGS.runlocal)
    print(markdown(result))


if __name__ == "__main__":
    flags.DEFINE_integer("seeds", 3, "student seeds 0..n-1 (the teacher: seed 0, trained once)")
    flags.DEFINE_string("out", None, "output directory: onpolicy.json, onpolicy.md, the runs")
    flags.DEFINE_bool("runlocal", False, "configs/lm_onpolicy.py:<mode>,runlocal (smaller)")
    flags.mark_flags_as_required(["out"])
    app.run(main)
