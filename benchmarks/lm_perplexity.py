r"""Held-out perplexity of a distilled LM student against the same student from scratch, by seed.

Every number comes from real jaxdistill runs of a causal-LM config (configs/lm_kd.py): its
teacher is trained ONCE (config.seed = 0; the config of `jaxdistill.experiment.teacher_config`)
into `<out>/teacher`, or taken from `--config.teacher.checkpoint=<finished teacher run>`
(then no teacher stage runs); then, for each seed s = 0..n-1 (config.seed = s), the student
from scratch (ce only; `jaxdistill.experiment.scratch_config`) into `<out>/seed<s>/scratch`
and the distilled student (the config as given, from that one teacher) into
`<out>/seed<s>/distilled`, each through `jaxdistill.train.train_and_evaluate`. Seed 0's three
stages are the stages of `python -m jaxdistill.main --config=<the same config>` (which also
samples from each model; this benchmark does not).

What is measured, per seed (from each run's own summary.json): the scratch and the distilled
student's held-out perplexity and next-token accuracy, the relative gain
1 - distilled / scratch (positive: the distilled student is better), the distilled student's
top-1 agreement with its teacher and KL(teacher || student) per token (the scratch run has no
teacher), training tokens/s (compilation, eval and checkpoints excluded), and each run's wall
time and process CPU time (user, sys: every thread of this process). Over the seeds: mean and
sample standard deviation (ddof=1; 0 for one seed) of both perplexities and of the gain, the
number of seeds on which the distilled student beats scratch, and the teacher's perplexity.

Output in `--out`: lm_perplexity.json (flags, environment, every run's summary and timing,
per-seed rows, the aggregate; rewritten after each run, so an interrupted benchmark keeps
what it finished) and lm_perplexity.md (the Markdown tables, also printed at the end). Run
directories are reused: a run whose summary.json is at config.num_steps and whose recorded
config.json matches (`jaxdistill.run_record`) is read back, not retrained; an unfinished one
resumes from its newest checkpoint; a run directory made with a different config is refused
before anything trains (use a fresh --out). Each trained run's timing is kept beside it in
benchmark_timing.json, so a rerun reports the times of the runs it reuses.

Usage (from the repository root):
  python -m benchmarks.lm_perplexity --config=configs/lm_kd.py --seeds=3 --out=/tmp/lm_ppl
  python -m benchmarks.lm_perplexity --config=configs/lm_kd.py:runlocal --seeds=3 --out=DIR
  python -m benchmarks.lm_perplexity --config=configs/lm_kd.py --seeds=3 --out=DIR \
      --config.teacher.checkpoint=/tmp/lm_kd/teacher          # reuse a trained teacher
  python -m benchmarks.lm_perplexity --config=configs/lm_xtok.py:runlocal --seeds=3 --out=DIR
      # a byte-level teacher and BPE students (task cross_tokenizer): the teacher's
      # perplexity is its distilled runs' own eval, per student token
  python -m benchmarks.lm_perplexity --config=configs/lm_kd.py --quick --out=/tmp/lm_ppl_quick
      # tiny: pydoc_topics, lm_tiny models, seq_len 32, vocab 512, a few steps, 2 seeds
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.accuracy import enable_compilation_cache, write_report
from jaxdistill import checkpoint, logs, run_record, validate
from jaxdistill.experiment import merge_summaries, scratch_config, teacher_config
from jaxdistill.run_setup import prepare_run
from jaxdistill.train import SUMMARY, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "benchmarks.lm_perplexity"  # errors: one line, `benchmarks.lm_perplexity: error: ...`
TIMING = "benchmark_timing.json"  # a trained run's wall and CPU time, beside its summary.json
QUICK_SEEDS = 2
# --quick: config fields set on top of the config file (those given as --config.<field> win)
# (compilation is most of its time: the teacher has the student's architecture and the
# schedule is constant, so the teacher and the scratch student run the same compiled programs,
# and the distilled student learns from a teacher trained twice as long)
_TINY = {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 64}
QUICK = {"data.name": "pydoc_topics", "data.max_documents": 40, "data.vocab_size": 512,
         "data.seq_len": 32, "teacher.model": "lm_tiny", "student.model": "lm_tiny",
         "teacher.kwargs": _TINY, "student.kwargs": _TINY, "teacher.train.num_steps": 8,
         "num_steps": 4, "batch_size": 8, "eval_batch_size": 16,
         "optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "log_every": 0,
         "eval_every": 0, "checkpoint_every": 0, "lm.chunk_size": 8, "lm.sample_tokens": 6}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "causal-LM run config file, e.g. "
                                    "configs/lm_kd.py or configs/lm_kd.py:runlocal; its fields "
                                    "can be overridden with --config.<field>=...",
                                    lock_config=True)
    flags.DEFINE_integer("seeds", 3, "number of student seeds; seed s = 0..n-1 (the teacher: "
                         "seed 0, trained once)")
    flags.DEFINE_string("out", "", "output directory (required): lm_perplexity.json, "
                        "lm_perplexity.md and the runs' work dirs")
    flags.DEFINE_bool("quick", False, "tiny mode for tests: pydoc_topics, lm_tiny models, "
                      f"seq_len 32, vocab 512, a few steps, {QUICK_SEEDS} seeds (--seeds and "
                      "--config.<field> given explicitly still apply)")
    flags.DEFINE_string("compilation_cache", "auto", "JAX persistent compilation cache directory "
                        "(runs that differ only in seed reuse their compiled steps); 'auto' = "
                        "<out>/jax_cache, '' = off")


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Run:
    """One training run of the benchmark."""

    name: str                   # 'teacher' | 'scratch' | 'distilled'
    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    external: bool = False      # a finished teacher given by config.teacher.checkpoint


def set_fields(config: ml_collections.ConfigDict, fields: dict) -> None:
    """Sets dotted fields ("data.seq_len") of `config` in place."""
    for key, value in fields.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = (ml_collections.ConfigDict(value) if isinstance(value, dict) else value)


def quick_config(config: ml_collections.ConfigDict, explicit=()) -> ml_collections.ConfigDict:
    """`config` shrunk to the --quick size, except the fields in `explicit` (given on the
    command line) and those below them."""
    c = copy.deepcopy(config)
    keep = tuple(explicit)
    with c.unlocked():
        set_fields(c, {k: v for k, v in QUICK.items()
                       if not any(k == e or k.startswith(f"{e}.") or e.startswith(f"{k}.")
                                  for e in keep)})
    return c


def _locked(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c = copy.deepcopy(c)
    c.lock()
    return c


def plan(config: ml_collections.ConfigDict, num_seeds: int, out: str) -> list[Run]:
    """The teacher (seed 0), then per seed its scratch and distilled student; raises
    ValueError on a config this benchmark cannot compare."""
    if num_seeds <= 0:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if config.task not in ("causal_lm", "cross_tokenizer"):
        raise ValueError(f"config.task is '{config.task}'; this benchmark compares causal-LM "
                         "students (configs/lm_kd.py, configs/lm_xtok.py)")
    if not config.teacher.model:
        raise ValueError("config.teacher.model is empty: there is nothing to distil from")
    if config.teacher.store:
        raise ValueError("config.teacher.store: this benchmark distils from the teacher "
                         "itself; leave the store empty")
    out = os.path.abspath(out)
    base = copy.deepcopy(config)
    with base.unlocked():
        base.baseline = False
    external = bool(config.teacher.checkpoint)
    teacher_dir = (os.path.abspath(os.path.expanduser(config.teacher.checkpoint)) if external
                   else os.path.join(out, "teacher"))
    t = copy.deepcopy(base)
    t.seed = 0
    runs = [Run("teacher", 0, _locked(teacher_config(t)), teacher_dir, external)]
    for seed in range(num_seeds):  # seed-major: after seed 0, every model has a result
        c = copy.deepcopy(base)
        c.seed = seed
        c.teacher.checkpoint = teacher_dir
        d = os.path.join(out, f"seed{seed}")
        runs.append(Run("scratch", seed, _locked(scratch_config(c)), os.path.join(d, "scratch")))
        runs.append(Run("distilled", seed, _locked(c), os.path.join(d, "distilled")))
    return runs


def check_plan(runs: list[Run]) -> None:
    """Before anything trains: `prepare_run` of seed 0's configs, and every existing run
    directory's recorded config against the one it would run (refused if it differs)."""
    teacher = runs[0]
    for run in runs:
        if run.external:
            continue
        if run.seed == 0:
            c = run.config
            if run.name == "distilled" and not teacher.external:  # its teacher: not trained yet
                c = copy.deepcopy(c)
                with c.unlocked():
                    c.teacher.checkpoint = ""
            prepare_run(c, teacher_checkpoint_required=run.name == "distilled"
                        and teacher.external)
        try:
            run_record.check(run.config, run.workdir)
        except ValueError as e:
            raise ValueError(f"{run.workdir} holds a different run: {e}") from None


# ----------------------------------------------------------------------------- running


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def finished_summary(run: Run) -> dict | None:
    """The summary of a finished run in `run.workdir` (summary.json at config.num_steps,
    config.json recorded and matching `run.config`), else None."""
    path = os.path.join(run.workdir, SUMMARY)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(run.workdir,
                                                                 run_record.CONFIG))):
        return None
    run_record.check(run.config, run.workdir)  # raises if it is another run
    summary = read_json(path)
    return summary if summary.get("steps") == int(run.config.num_steps) else None


def execute(run: Run, log=print) -> dict:
    """Trains `run` (or reads it back if finished) and returns its record: the run's
    summary.json and its timing."""
    rec = {"name": run.name, "seed": run.seed, "workdir": run.workdir,
           "model": run.config.student.model, "steps": int(run.config.num_steps),
           "external": run.external, "reused": True, "summary": None, "timing": None}
    timing_path = os.path.join(run.workdir, TIMING)
    if run.external:
        if os.path.isfile(os.path.join(run.workdir, SUMMARY)):
            rec["summary"] = read_json(os.path.join(run.workdir, SUMMARY))
        return rec
    summary = finished_summary(run)
    if summary is not None:
        rec["summary"] = summary
        rec["timing"] = read_json(timing_path) if os.path.isfile(timing_path) else None
        return rec
    ckpts = os.path.join(run.workdir, checkpoint.CHECKPOINT_DIR)
    resumed = os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
    start, cpu = time.perf_counter(), os.times()
    with contextlib.redirect_stdout(sys.stderr):  # progress: stderr; the tables: stdout
        summary = train_and_evaluate(run.config, run.workdir)
    end = os.times()
    timing = {"wall_s": time.perf_counter() - start, "user_s": end.user - cpu.user,
              "sys_s": end.system - cpu.system, "resumed": resumed,
              "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    run_record.write_atomically(timing_path, json.dumps(timing, indent=2) + "\n")
    rec.update(reused=False, summary=summary, timing=timing)
    return rec


# ----------------------------------------------------------------------------- summaries


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1, or 0 for one value) of the non-None values."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def seed_row(scratch: dict, distilled: dict, teacher: dict | None) -> dict:
    """One seed's comparison from its scratch and distilled records."""
    s, d = scratch["summary"], distilled["summary"]
    merged = merge_summaries({"student": d, "scratch": s,
                              **({"teacher": teacher["summary"]}
                                 if teacher and teacher["summary"] else {})})
    wall = {n: (r["timing"] or {}).get("wall_s") for n, r in (("scratch", scratch),
                                                              ("distilled", distilled))}
    return {"seed": distilled["seed"],
            "scratch_perplexity": s["student_perplexity"],
            "distilled_perplexity": d["student_perplexity"],
            "gain": 1.0 - d["student_perplexity"] / s["student_perplexity"],
            "distilled_beats_scratch": d["student_perplexity"] < s["student_perplexity"],
            "scratch_accuracy": s["student_accuracy"], "distilled_accuracy": d["student_accuracy"],
            "scratch_nll": s["student_nll"], "distilled_nll": d["student_nll"],
            "agreement": d.get("agreement"), "kl": d.get("kl"),
            "teacher_perplexity": d.get("teacher_perplexity"),
            "scratch_tokens_per_second": s["tokens_per_second"],
            "distilled_tokens_per_second": d["tokens_per_second"],
            "scratch_wall_s": wall["scratch"], "distilled_wall_s": wall["distilled"],
            "merged_summary": merged}


def aggregate(rows: list[dict], records: list[dict]) -> dict:
    """Mean and sample std over the seeds, wins, and the teacher's numbers."""
    by = {(r["name"], r["seed"]): r for r in records}
    teacher = by[("teacher", 0)]
    agg = {"n": len(rows), "seeds": [r["seed"] for r in rows]}
    for field in ("scratch_perplexity", "distilled_perplexity", "gain", "scratch_accuracy",
                  "distilled_accuracy", "agreement", "kl", "scratch_tokens_per_second",
                  "distilled_tokens_per_second"):
        agg[f"{field}_mean"], agg[f"{field}_std"] = mean_std([r[field] for r in rows])
    agg["wins"] = sum(bool(r["distilled_beats_scratch"]) for r in rows)
    t = teacher["summary"] or {}
    evaluated = [r["teacher_perplexity"] for r in rows if r["teacher_perplexity"] is not None]
    agg["teacher_perplexity"] = t.get("student_perplexity", evaluated[0] if evaluated else None)
    if evaluated and rows[0]["merged_summary"].get("task") == "cross_tokenizer":
        agg["teacher_perplexity"] = evaluated[0]  # per student token (its own run's: per byte)
    agg["teacher_perplexity_in_distilled_runs"] = evaluated
    agg["teacher_accuracy"] = t.get("student_accuracy")
    agg["teacher_tokens_per_second"] = t.get("tokens_per_second")
    agg["teacher_wall_s"] = (teacher["timing"] or {}).get("wall_s")
    agg["seed0_demo"] = None  # teacher + scratch + distilled of seed 0: the demo's stages
    stages = [(by.get(k) or {}).get("timing")
              for k in (("teacher", 0), ("scratch", 0), ("distilled", 0))]
    if all(stages):
        agg["seed0_demo"] = {k: float(sum(s[k] for s in stages))
                             for k in ("wall_s", "user_s", "sys_s")}
        agg["seed0_demo"]["resumed"] = any(s.get("resumed") for s in stages)
    return agg


def notes_for(agg: dict, records: list[dict]) -> list[str]:
    teacher = records[0]
    notes = []
    if agg["teacher_perplexity"] is not None and agg["scratch_perplexity_mean"] is not None \
            and agg["teacher_perplexity"] >= agg["scratch_perplexity_mean"]:
        notes.append(f"the teacher ({agg['teacher_perplexity']:.3f}) is not better than the "
                     f"scratch student ({agg['scratch_perplexity_mean']:.3f}, mean): the "
                     "recipe needs a stronger teacher")
    ev = agg["teacher_perplexity_in_distilled_runs"]
    if ev and agg["teacher_perplexity"] is not None and \
            max(abs(p / agg["teacher_perplexity"] - 1) for p in ev) > 1e-4:
        notes.append("the teacher's perplexity as evaluated in the distilled runs ("
                     + ", ".join(f"{p:.4f}" for p in ev) + ") differs from its own run's "
                     f"({agg['teacher_perplexity']:.4f})")
    if teacher["external"]:
        notes.append(f"teacher: the finished run {teacher['workdir']} (config.teacher."
                     "checkpoint), not trained by this benchmark")
    if any(r["timing"] and r["timing"].get("resumed") for r in records):
        notes.append("some runs resumed from a checkpoint: their times cover the resumed part "
                     "only")
    if any(r["timing"] is None and not r["external"] for r in records):
        notes.append("some reused runs have no benchmark_timing.json (not trained by this "
                     "benchmark): their times are '-'")
    return notes


# ----------------------------------------------------------------------------- output


def _num(value, spec) -> str:
    return "-" if value is None else format(value, spec)


def _pm(mean, std, spec, n) -> str:
    if mean is None:
        return "-"
    return format(mean, spec) + (f" ± {format(std, spec.lstrip('+'))}" if n > 1 else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _time(timing: dict | None) -> str:
    if not timing:
        return "-"
    return f"{timing['wall_s']:.0f} s ({timing['user_s']:.0f} s user CPU)"


def markdown(result: dict) -> str:
    env, agg, cfg = result["environment"], result["aggregate"], result["config_summary"]
    n = agg["n"]
    lines = ["# LM perplexity: distilled vs scratch student, over seeds", "",
             f"`{result['command']}`", "",
             (f"{result['date']}; {env['device_count']} x {env['device_kind']} ({env['backend']}), "
              f"{env['cpu_count']} CPUs, jax {env['jax']}, commit {env['git_commit'] or '?'}; "
              f"wall time of this invocation {_num(result.get('wall_s'), '.0f')} s"
              + (" (some runs reused from an earlier one)" if any(
                  r["reused"] and not r["external"] for r in result["runs"]) else "") + "."), "",
             (f"{cfg['dataset']} (vocab {cfg['vocab_size']}, seq_len {cfg['seq_len']}, "
              f"max_documents {cfg['max_documents']}); teacher {cfg['teacher_model']} "
              f"({_num(cfg['teacher_params'], ',')} params, {cfg['teacher_steps']} steps, seed 0, "
              f"trained once); student {cfg['student_model']} ({_num(cfg['student_params'], ',')} "
              f"params, {cfg['student_steps']} steps, batch {cfg['batch_size']}); objective of "
              f"the distilled student: {cfg['objective']}, logit terms in chunks of "
              f"{cfg['chunk_size']} positions. Perplexity: held-out, per token "
              "(lower is better). Gain = 1 - distilled / scratch perplexity (positive: "
              "distillation helps). Agreement: top-1 agreement of the distilled student with "
              "the teacher; KL(teacher || student) per token. tok/s: each run's training "
              "throughput (compilation, eval and checkpoints excluded) on this machine."), ""]
    body = [[str(r["seed"]), f"{r['scratch_perplexity']:.3f}", f"{r['distilled_perplexity']:.3f}",
             f"{100 * r['gain']:+.2f}%", f"{100 * r['scratch_accuracy']:.2f}",
             f"{100 * r['distilled_accuracy']:.2f}", _num(r["agreement"], ".4f"),
             _num(r["kl"], ".4f"), _num(r["scratch_tokens_per_second"], ",.0f"),
             _num(r["distilled_tokens_per_second"], ",.0f")] for r in result["per_seed"]]
    if n:
        body.append([f"mean ± std ({n} seed{'s' if n > 1 else ''})",
                     _pm(agg["scratch_perplexity_mean"], agg["scratch_perplexity_std"], ".3f", n),
                     _pm(agg["distilled_perplexity_mean"], agg["distilled_perplexity_std"],
                         ".3f", n),
                     (_pm(100 * agg["gain_mean"], 100 * agg["gain_std"], "+.2f", n) + "%"),
                     _pm(100 * agg["scratch_accuracy_mean"], 100 * agg["scratch_accuracy_std"],
                         ".2f", n),
                     _pm(100 * agg["distilled_accuracy_mean"],
                         100 * agg["distilled_accuracy_std"], ".2f", n),
                     _pm(agg["agreement_mean"], agg["agreement_std"], ".4f", n),
                     _pm(agg["kl_mean"], agg["kl_std"], ".4f", n),
                     _num(agg["scratch_tokens_per_second_mean"], ",.0f"),
                     _num(agg["distilled_tokens_per_second_mean"], ",.0f")])
    lines += _table(["seed", "scratch ppl", "distilled ppl", "gain", "scratch token acc %",
                     "distilled token acc %", "agreement", "KL", "scratch tok/s",
                     "distilled tok/s"], body)
    t_acc = None if agg["teacher_accuracy"] is None else 100 * agg["teacher_accuracy"]
    lines += ["", (f"Teacher ({cfg['teacher_model']}): perplexity "
                   f"{_num(agg['teacher_perplexity'], '.3f')}, token accuracy "
                   f"{_num(t_acc, '.2f')}%, "
                   f"{_num(agg['teacher_tokens_per_second'], ',.0f')} tok/s training. "
                   f"The distilled student beats scratch on **{agg['wins']} of {n}** seed"
                   f"{'s' if n != 1 else ''}."), ""]
    timings = {(r["name"], r["seed"]): r["timing"] for r in result["runs"]}
    lines += [("Run times (wall, and this process's user CPU time over all its threads; the "
               "machine may be shared, so wall times are noisy):"), ""]
    teacher_time = timings.get(("teacher", 0))
    lines += _table(["seed", "teacher (seed 0, once)", "scratch", "distilled"],
                    [[str(r["seed"]), _time(teacher_time) if r["seed"] == 0 else "-",
                      _time(timings.get(("scratch", r["seed"]))),
                      _time(timings.get(("distilled", r["seed"])))] for r in result["per_seed"]])
    demo = agg.get("seed0_demo")
    if demo:
        lines += ["", (f"Seed 0's teacher + scratch + distilled (the stages of `python -m "
                       f"jaxdistill.main` on this config, its samples excepted): "
                       f"{demo['wall_s']:.0f} s wall ({demo['wall_s'] / 60:.1f} min), "
                       f"{demo['user_s']:.0f} s user + {demo['sys_s']:.0f} s sys CPU"
                       + (" (part of it resumed)" if demo["resumed"] else "") + ".")]
    lines += [""] + [f"Note: {x}" for x in result.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10,
                                check=False).stdout.strip() or None
    except OSError:
        commit = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "device_count": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit, "load_average_at_start": load}


def config_summary(runs: list[Run], records: list[dict]) -> dict:
    teacher, distilled = runs[0], runs[2]
    sums = {(r["name"], r["seed"]): r["summary"] or {} for r in records}
    d = sums.get(("distilled", 0), {})
    c = distilled.config
    return {"dataset": c.data.name, "vocab_size": c.data.vocab_size, "seq_len": c.data.seq_len,
            "max_documents": c.data.max_documents, "batch_size": c.batch_size,
            "chunk_size": c.lm.chunk_size,
            "teacher_model": c.teacher.model, "student_model": c.student.model,
            "teacher_steps": int(teacher.config.num_steps) if not teacher.external else None,
            "student_steps": int(c.num_steps),
            "teacher_params": d.get("teacher_params"), "student_params": d.get("student_params"),
            "objective": ", ".join(f"{k} ({', '.join(f'{f} {x}' for f, x in v.items())})"
                                   for k, v in c.objective.items()),
            "teacher_checkpoint": teacher.workdir}


def build_result(runs: list[Run], records: list[dict], header: dict) -> dict:
    """The result from the records so far (seeds with both runs finished form rows)."""
    by = {(r["name"], r["seed"]): r for r in records}
    teacher = by[("teacher", 0)]
    rows = []
    for seed in sorted({r.seed for r in runs if r.name != "teacher"}):
        s, d = by.get(("scratch", seed)), by.get(("distilled", seed))
        if s and d:
            rows.append(seed_row(s, d, teacher))
    agg = aggregate(rows, records)
    notes = notes_for(agg, records)
    return {**header, "config_summary": config_summary(runs, records), "runs": records,
            "per_seed": rows, "aggregate": agg, "notes": notes}


def write_outputs(result: dict, out: str) -> None:
    write_report(out, "lm_perplexity", result, markdown(result))


def run_benchmark(runs: list[Run], out: str, *, header: dict, log=print) -> dict:
    """Trains (or reuses) every run, in order; writes the outputs after each; returns the
    result."""
    with contextlib.redirect_stdout(sys.stderr):  # TFDS reports preparing a dataset on stdout
        check_plan(runs)
    start = time.perf_counter()
    records = []
    result = None
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.name} seed {run.seed} -> {run.workdir}")
        try:
            rec = execute(run, log=log)
        except SystemExit:  # a preemption notice: the run saved a checkpoint and stopped
            log(f"stopped during {run.name} seed {run.seed}; rerun the same command to resume "
                "(finished runs are reused, not retrained)")
            raise
        records.append(rec)
        ppl = (rec["summary"] or {}).get("student_perplexity")
        log(f"[{i}/{len(runs)}] {run.name} seed {run.seed}: "
            + ("reused" if rec["reused"] else f"trained in {rec['timing']['wall_s']:.0f} s")
            + (f", perplexity {ppl:.3f}" if ppl is not None else ""))
        result = build_result(runs, records, {**header,
                                              "wall_s": time.perf_counter() - start})
        write_outputs(result, out)  # an interrupted benchmark keeps what it finished
    return result


def main(argv):
    del argv  # validate.flags_parser refuses arguments that are not flags
    if not FLAGS["verbosity"].present:
        logs.quiet_library_logs()  # before planning: preparing the data logs TFDS notices
    with validate.reported(PROG):
        if not FLAGS.out:
            raise ValueError("--out is required; give --out=DIR (results and the runs' work "
                             "dirs go there)")
        if FLAGS.config is None:
            raise ValueError("--config is required; give --config=configs/lm_kd.py[:runlocal]")
        overrides = config_flags.get_override_values(FLAGS["config"])
        config = FLAGS.config
        if FLAGS.quick:
            config = _locked(quick_config(config, explicit=overrides))
        validate.check_config(config)
        seeds = FLAGS.seeds if (FLAGS["seeds"].present or not FLAGS.quick) else QUICK_SEEDS
        out = os.path.abspath(os.path.expanduser(FLAGS.out))
        runs = plan(config, seeds, out)
    if FLAGS.compilation_cache:
        enable_compilation_cache(os.path.join(out, "jax_cache")
                                 if FLAGS.compilation_cache == "auto" else FLAGS.compilation_cache)

    def log(line):
        print(line, file=sys.stderr, flush=True)
    header = {"benchmark": "lm_perplexity",
              "command": "python -m benchmarks.lm_perplexity " + " ".join(sys.argv[1:]),
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "flags": {"config": config_flags.get_config_filename(FLAGS["config"]),
                        "config_overrides": {k: str(v) for k, v in overrides.items()},
                        "seeds": seeds, "quick": FLAGS.quick,
                        "compilation_cache": FLAGS.compilation_cache},
              "config": json.loads(config.to_json()), "environment": environment()}
    with validate.reported(PROG):
        result = run_benchmark(runs, out, header=header, log=log)
    log(f"wrote {os.path.join(out, 'lm_perplexity.json')} and lm_perplexity.md")
    print(markdown(result), flush=True)


if __name__ == "__main__":
    validate.exit_if_a_flagfile_is_unreadable(sys.argv, PROG)
    define_flags()
    app.run(main, flags_parser=validate.flags_parser(PROG))
