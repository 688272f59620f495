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

What is measured, per run: top-1 accuracy at the last eval and at the best eval (from the run's
metrics.jsonl 'eval' records; published tables differ on which they report), and, from the
final student restored from its checkpoint and run over the eval split: per-class accuracy,
test errors, and top-1 agreement with its teacher. Per model and suite, over the seeds: mean
and sample standard deviation (ddof=1; 0 for one seed), the fraction of the teacher-student
gap closed, (method - scratch) / (teacher - scratch), per seed and of the means (undefined where
the teacher is not above the scratch student), and the classes the student loses most
relative to its teacher. Accuracies are fractions in the JSON and percentages in the tables.

Output in `--out`: accuracy.json (flags, environment, every run record and every summary row;
rewritten after each run, so an interrupted benchmark keeps what it finished), accuracy.md
(Markdown tables) and PNG plots (benchmarks/plots.py): accuracy per model with error bars,
accuracy against parameter count, the Hinton errors beside the paper, and throughput per mode
from `--throughput_json` (a benchmarks/throughput.py output; skipped, and said so, without it).
Run directories are reused: a finished run is restored and re-measured, not retrained, and a
run directory made with a different config is refused (use a fresh --out).

Usage (from the repository root):
  python -m benchmarks.accuracy --quick --out=/tmp/acc_quick     # digits, 2 seeds, ~1 min on CPU
  python -m benchmarks.accuracy --suite=methods --seeds=1 --out=/tmp/acc       # every method
  python -m benchmarks.accuracy --suite=hinton --seeds=3 --out=/tmp/acc_hinton
  python -m benchmarks.accuracy --suite=methods --methods=kd,dkd,crd --steps_scale=0.5 --out=DIR
  python -m benchmarks.accuracy --report_only --out=DIR --throughput_json=/tmp/bench/throughput.json
  benchmarks/cifar100.sh /path/to/tensorflow_datasets OUTDIR    # GPU, hours per run
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from jaxdistill import checkpoint, data
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.recipes import METHODS
from jaxdistill.run_setup import model_cost, prepare_run
from jaxdistill.step import forward
from jaxdistill.train import SUMMARY, train_and_evaluate

if __package__:  # python -m benchmarks.accuracy
    from benchmarks import plots
else:  # python benchmarks/accuracy.py
    import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("methods", "hinton", "cifar100", "all")
RUN_CONFIG = "benchmark_config.json"  # the config a run directory was made with

# Published top-1 (%) on CIFAR-100, resnet32x4 -> resnet8x4: CRD paper (Tian et al., ICLR 2020)
# Table 1, and DKD (Zhao et al., CVPR 2022) Table 1; see configs/cifar100_methods.py.
CIFAR100_PUBLISHED = {"teacher": 79.42, "scratch": 72.50, "kd": 73.33, "fitnet": 73.50,
                      "at": 73.44, "sp": 72.94, "rkd": 71.90, "pkt": 73.64, "crd": 75.51,
                      "dkd": 76.32}
CIFAR100_METHODS = ("kd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "dkd")
# Hinton, Vinyals & Dean (2015), section 3: test errors on full MNIST (60,000 train, 10,000 test).
HINTON_PUBLISHED = {"teacher_errors": 67, "scratch_errors": 146, "distilled_errors": 74,
                    "test_examples": 10_000}
HINTON_PUBLISHED["gap_closed"] = ((HINTON_PUBLISHED["scratch_errors"]
                                   - HINTON_PUBLISHED["distilled_errors"])
                                  / (HINTON_PUBLISHED["scratch_errors"]
                                     - HINTON_PUBLISHED["teacher_errors"]))
QUICK_METHODS = ("kd", "dkd")
QUICK_SEEDS = 2

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


# ----------------------------------------------------------------------------- plan


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of configs/<name>.py (unlocked, to be adjusted, then locked)."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jaxdistill_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@dataclasses.dataclass
class Run:
    """One training run of a suite."""

    suite: str
    name: str                   # 'teacher', 'scratch', a method name, or 'distilled' (hinton)
    role: str                   # 'teacher' | 'scratch' | 'student'
    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    teacher: Run | None = None  # the teacher this run is compared with (and distilled from)
    external: bool = False      # a finished run given by --teacher_checkpoint: not trained here


@dataclasses.dataclass
class Suite:
    name: str
    title: str
    config_files: str
    runs: list[Run]
    names: list[str]            # row order: teacher, scratch, then the students
    shared_teacher: bool
    published: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def scale_steps(c: ml_collections.ConfigDict, scale: float) -> None:
    """Multiplies the step counts of `c` by `scale` (at least 1 step; 0 = 'off' stays 0)."""
    if scale == 1.0:
        return

    def s(n):
        return max(1, round(n * scale)) if n else n
    c.num_steps = s(c.num_steps)
    c.teacher.train.num_steps = s(c.teacher.train.num_steps)
    for field in ("log_every", "eval_every", "checkpoint_every"):
        c[field] = s(c[field])
    c.optimizer.warmup_steps = s(c.optimizer.warmup_steps)
    for term in c.objective.values():
        if "warmup_steps" in term:
            term.warmup_steps = s(term.warmup_steps)


def _finish(c, seed: int, scale: float, data_dir: str) -> ml_collections.ConfigDict:
    c.seed = seed
    if data_dir:
        c.data.data_dir = data_dir
    scale_steps(c, scale)
    return c


def _locked(c):
    c = copy.deepcopy(c)
    c.lock()
    return c


def _quick_methods(c: ml_collections.ConfigDict) -> None:
    """`<method>,tiny` (digits) with a real teacher (the normal 32-64 CNN) and a few dozen steps."""
    c.teacher.kwargs = ml_collections.ConfigDict()
    c.data.augment_pixels = 1  # 2-pixel jitter on 8x8 digits is too much for a short run
    c.teacher.train.num_steps = 300
    c.num_steps = 60
    c.log_every = c.eval_every = c.checkpoint_every = 30
    if "dkd" in c.objective:  # the config ramps DKD up over a tenth of the run
        c.objective.dkd.warmup_steps = c.num_steps // 10


def _quick_hinton(c: ml_collections.ConfigDict) -> None:
    """configs/mnist_kd.py (same models, T = 20) on digits with a few dozen steps."""
    c.data.name = "digits"
    c.data.augment_pixels = 1
    c.batch_size = 64
    c.eval_batch_size = 120
    c.teacher.train.num_steps = 300
    c.num_steps = 60
    c.log_every = c.eval_every = c.checkpoint_every = 30


def _distilled(c, teacher: Run):
    c = copy.deepcopy(c)
    c.teacher.checkpoint = teacher.workdir
    c.baseline = False
    return _locked(c)


def methods_suite(methods, seeds, *, quick, scale, root, data_dir, teacher_checkpoint) -> Suite:
    def cfg(method, seed):
        c = load_config("mnist_methods", f"{method},tiny" if quick else method)
        if quick:
            _quick_methods(c)
        return _finish(c, seed, scale, data_dir)
    teacher = Run("methods", "teacher", "teacher", 0, _locked(teacher_config(cfg("kd", 0))),
                  teacher_checkpoint or os.path.join(root, "teacher"),
                  external=bool(teacher_checkpoint))
    runs = [teacher]
    for seed in seeds:  # seed-major: after seed 0, every model has a result
        runs.append(Run("methods", "scratch", "scratch", seed,
                        _locked(scratch_config(cfg("kd", seed))),
                        os.path.join(root, "scratch", f"seed{seed}"), teacher))
        for m in methods:
            runs.append(Run("methods", m, "student", seed, _distilled(cfg(m, seed), teacher),
                            os.path.join(root, m, f"seed{seed}"), teacher))
    data_name = "digits (quick)" if quick else "mnist5k"
    return Suite("methods", f"Every method on {data_name}: CNN teacher -> CNN student",
                 "configs/mnist_methods.py" + (":<method>,tiny (quick)" if quick else ":<method>"),
                 runs, ["teacher", "scratch", *methods], shared_teacher=True)


def hinton_suite(seeds, *, quick, scale, root, data_dir) -> Suite:
    runs = []
    for seed in seeds:
        c = load_config("mnist_kd")
        if quick:
            _quick_hinton(c)
        c = _finish(c, seed, scale, data_dir)
        d = os.path.join(root, f"seed{seed}")
        teacher = Run("hinton", "teacher", "teacher", seed, _locked(teacher_config(c)),
                      os.path.join(d, "teacher"))
        runs += [teacher,
                 Run("hinton", "scratch", "scratch", seed, _locked(scratch_config(c)),
                     os.path.join(d, "scratch"), teacher),
                 Run("hinton", "distilled", "student", seed, _distilled(c, teacher),
                     os.path.join(d, "distilled"), teacher)]
    notes = ["published: Hinton, Vinyals & Dean (2015), full MNIST (60,000 train / 10,000 test); "
             "here " + ("digits (quick mode)" if quick else
                        "mnist5k (4,000 train / 1,000 test)") +
             ", so compare error rates (%) and the gap closed, not counts"]
    return Suite("hinton", "Hinton et al. (2015) MNIST experiment"
                 + (" (quick: on digits)" if quick else " on mnist5k"),
                 "configs/mnist_kd.py", runs, ["teacher", "scratch", "distilled"],
                 shared_teacher=False, published=dict(HINTON_PUBLISHED), notes=notes)


def cifar100_suite(methods, seeds, *, scale, root, data_dir, teacher_checkpoint) -> Suite:
    t = _finish(load_config("cifar100_teacher"), 0, scale, data_dir)
    teacher = Run("cifar100", "teacher", "teacher", 0, _locked(t),
                  teacher_checkpoint or os.path.join(root, "teacher"),
                  external=bool(teacher_checkpoint))
    runs = [teacher]
    for seed in seeds:
        base = _finish(load_config("cifar100_methods", "kd"), seed, scale, data_dir)
        runs.append(Run("cifar100", "scratch", "scratch", seed, _locked(scratch_config(base)),
                        os.path.join(root, "scratch", f"seed{seed}"), teacher))
        for m in methods:
            c = _finish(load_config("cifar100_methods", m), seed, scale, data_dir)
            runs.append(Run("cifar100", m, "student", seed, _distilled(c, teacher),
                            os.path.join(root, m, f"seed{seed}"), teacher))
    notes = [("published: CRD (Tian et al., ICLR 2020) Table 1 and DKD (Zhao et al., CVPR 2022) "
             "Table 1, resnet32x4 -> resnet8x4, top-1 (%) on the CIFAR-100 test set")]
    if scale != 1.0:
        notes.append(f"--steps_scale={scale}: shorter than the published 240-epoch recipe")
    return Suite("cifar100", "CIFAR-100: resnet32x4 -> resnet8x4",
                 "configs/cifar100_teacher.py, configs/cifar100_methods.py:<method>", runs,
                 ["teacher", "scratch", *methods], shared_teacher=True,
                 published={k: v for k, v in CIFAR100_PUBLISHED.items()}, notes=notes)


def build_suites(suite: str, methods, num_seeds: int, *, quick=False, scale=1.0, out: str,
                 data_dir="", teacher_checkpoint="") -> list[Suite]:
    """The suites' runs (configs and work dirs); raises ValueError on a bad argument."""
    if suite not in SUITES:
        raise ValueError(f"--suite: unknown suite '{suite}'; choose from {list(SUITES)}")
    if num_seeds <= 0:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if not scale > 0:
        raise ValueError(f"--steps_scale must be > 0, got {scale}")
    known = METHODS
    if methods is not None:
        methods = list(dict.fromkeys(methods))
        for m in methods:
            if m not in known:
                raise ValueError(f"--methods: unknown method '{m}'; choose from {list(known)}")
        if not methods:
            raise ValueError("--methods is empty")
    if teacher_checkpoint:
        teacher_checkpoint = os.path.abspath(os.path.expanduser(teacher_checkpoint))
        if suite not in ("methods", "cifar100"):
            raise ValueError("--teacher_checkpoint applies to --suite=methods or cifar100 (the "
                             "hinton suite trains one teacher per seed)")
    seeds = list(range(num_seeds))
    runs_root = os.path.join(os.path.abspath(out), "runs")
    suites = []
    if suite in ("methods", "all"):
        default = QUICK_METHODS if quick else METHODS
        suites.append(methods_suite(methods or list(default), seeds, quick=quick, scale=scale,
                                    root=os.path.join(runs_root, "methods"), data_dir=data_dir,
                                    teacher_checkpoint=teacher_checkpoint))
    if suite in ("hinton", "all"):
        suites.append(hinton_suite(seeds, quick=quick, scale=scale,
                                   root=os.path.join(runs_root, "hinton"), data_dir=data_dir))
    if suite == "cifar100":
        suites.append(cifar100_suite(methods or list(CIFAR100_METHODS), seeds, scale=scale,
                                     root=os.path.join(runs_root, "cifar100"),
                                     data_dir=data_dir, teacher_checkpoint=teacher_checkpoint))
    return suites


def validate(suites: list[Suite]) -> None:
    """`prepare_run` of every distinct config (seed 0's), before anything trains."""
    seen = set()
    for suite in suites:
        for run in suite.runs:
            if (suite.name, run.name) in seen:
                continue
            seen.add((suite.name, run.name))
            c = run.config
            if run.role == "student" and not run.teacher.external:
                c = copy.deepcopy(c)  # its teacher is not trained yet
                with c.unlocked():
                    c.teacher.checkpoint = ""
            prepare_run(c, teacher_checkpoint_required=False)
            if run.external:
                checkpoint.teacher_directory(run.workdir)


# ----------------------------------------------------------------------------- measuring


def _check_run_dir(run: Run) -> None:
    """Writes the run's config beside it, or refuses a directory made with another config."""
    path = os.path.join(run.workdir, RUN_CONFIG)
    wanted = json.loads(run.config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != wanted:
            diff = sorted(_diff(stored, wanted))[:5]
            raise ValueError(f"{run.workdir} holds a run with a different config (differs in "
                             f"{', '.join(diff)}); use a fresh --out or delete that directory")
        return
    os.makedirs(run.workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(wanted, f, indent=2)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def read_evals(workdir: str) -> list[dict]:
    """The run's eval records from metrics.jsonl, one per step (a resumed run's latest record
    of a step wins), by step."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("split") == "eval":
                    by_step[int(r["step"])] = {k: v for k, v in r.items()
                                               if k not in ("split", "time")}
    return [by_step[s] for s in sorted(by_step)]


def predict(config, workdir: str, *, cost: bool = True) -> dict:
    """Restores the final student of the run `config` made in `workdir` (its newest `model`
    item) and runs it over the eval split: predictions, labels, and (with `cost`) the
    parameter count and forward FLOPs per example."""
    setup = prepare_run(config)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    variables = checkpoint.load_teacher(workdir, abstract)
    ctx = setup.ctx

    @jax.jit
    def predict_batch(v, images):
        x = ctx.task.inputs({"image": images}, None, train=False).x
        logits, _, _ = forward(ctx.student_def, v["params"], v["batch_stats"], x, train=False)
        return jnp.argmax(logits, -1)
    preds, labels = [], []
    for batch in data.make_eval_iterator(setup.info, split=config.data.eval_split,
                                         reader=config.data.reader,
                                         global_batch_size=config.eval_batch_size,
                                         sharding=setup.batch_sharding):
        p, y, mask = jax.device_get((predict_batch(variables, batch["image"]), batch["label"],
                                     batch["mask"]))
        keep = np.asarray(mask) > 0
        preds.append(np.asarray(p)[keep])
        labels.append(np.asarray(y)[keep])
    params, flops = (model_cost(ctx.student_def, abstract, setup.info.image_shape) if cost
                     else (None, None))
    return {"preds": np.concatenate(preds).astype(np.int64),
            "labels": np.concatenate(labels).astype(np.int64),
            "num_classes": setup.info.num_classes, "params": params, "flops": flops,
            "dataset": setup.info.name}


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    """Accuracy of each class (None for a class absent from the eval split)."""
    out = []
    for c in range(num_classes):
        sel = labels == c
        out.append(float(np.mean(preds[sel] == c)) if sel.any() else None)
    return out


def _finished_summary(run: Run) -> dict | None:
    """The summary of a run this benchmark already finished in `run.workdir` (its summary
    and its last eval at `num_steps`, its newest checkpoint at `num_steps`), else None."""
    path = os.path.join(run.workdir, SUMMARY)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    evals = read_evals(run.workdir)
    steps = int(run.config.num_steps)
    ckpt_dir = os.path.join(run.workdir, checkpoint.CHECKPOINT_DIR)
    saved = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
    if (summary.get("steps") != steps or not evals or evals[-1]["step"] != steps
            or max(saved, default=None) != steps):
        return None
    return summary


def measure(run: Run, predictions: dict, log=print) -> dict:
    """Trains (or restores) `run` and returns its record; `predictions` caches each teacher's
    predictions by work dir (filled here for teachers)."""
    summary, wall, reused = {}, None, True
    if not run.external:
        _check_run_dir(run)
        summary = _finished_summary(run)
        if summary is None:
            reused = False
            start = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # progress: stderr; tables: stdout
                summary = train_and_evaluate(run.config, run.workdir)
            wall = time.perf_counter() - start
    elif os.path.exists(os.path.join(run.workdir, SUMMARY)):
        with open(os.path.join(run.workdir, SUMMARY)) as f:
            summary = json.load(f)
    evals = read_evals(run.workdir)
    p = predict(run.config, run.workdir, cost="student_params" not in summary)
    if "student_params" in summary:
        p["params"], p["flops"] = summary["student_params"], summary["student_flops_per_example"]
    preds, labels = p["preds"], p["labels"]
    if run.role == "teacher":
        predictions[run.workdir] = preds
    accuracy = float(np.mean(preds == labels))
    last = evals[-1] if evals else {"step": summary.get("steps"), "accuracy": accuracy}
    best = max(evals, key=lambda r: r["accuracy"]) if evals else last
    rec = {
        "suite": run.suite, "name": run.name, "role": run.role, "seed": run.seed,
        "method": run.name if run.role == "student" else None,
        "workdir": run.workdir, "external": run.external, "dataset": p["dataset"],
        "model": run.config.student.model, "steps": int(run.config.num_steps),
        "teacher_workdir": run.teacher.workdir if run.teacher else None,
        "last_step": last["step"], "last_accuracy": float(last["accuracy"]),
        "best_step": best["step"], "best_accuracy": float(best["accuracy"]),
        "evals": [{"step": r["step"], "accuracy": r["accuracy"]} for r in evals],
        "eval_examples": int(labels.size), "errors": int(np.sum(preds != labels)),
        "accuracy_from_predictions": accuracy,
        "per_class_accuracy": per_class_accuracy(preds, labels, p["num_classes"]),
        "agreement": None, "agreement_from_run": summary.get("agreement"),
        "params": p["params"], "flops_per_example": p["flops"],
        "examples_per_second": summary.get("examples_per_second"),
        "wall_s": wall, "reused": reused,
    }
    if run.teacher is not None:
        rec["agreement"] = float(np.mean(preds == predictions[run.teacher.workdir]))
    if abs(accuracy - rec["last_accuracy"]) > 1e-9:
        log(f"warning: {run.suite}/{run.name}/seed{run.seed}: the restored final student scores "
            f"{accuracy:.4f}, its last eval record {rec['last_accuracy']:.4f}")
    return rec


# ----------------------------------------------------------------------------- summaries


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1, or 0 for one value) of the non-None values."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def gap_closed(student: float, scratch: float, teacher: float) -> float | None:
    """(student - scratch) / (teacher - scratch); None unless the teacher beats scratch."""
    gap = teacher - scratch
    return (student - scratch) / gap if gap > 0 else None


def summarize(suite_name: str, names: list[str], records: list[dict],
              published: dict | None = None) -> list[dict]:
    """One row per model name (in `names` order, those with records) over its seeds."""
    by_key = {(r["name"], r["seed"]): r for r in records}
    teachers = {r["workdir"]: r for r in records if r["role"] == "teacher"}
    rows = []
    for name in names:
        recs = sorted((r for r in records if r["name"] == name), key=lambda r: r["seed"])
        if not recs:
            continue
        role = recs[0]["role"]
        row = {"suite": suite_name, "name": name, "role": role,
               "seeds": [r["seed"] for r in recs], "n": len(recs),
               "model": recs[0]["model"], "params": recs[0]["params"],
               "flops_per_example": recs[0]["flops_per_example"],
               "eval_examples": recs[0]["eval_examples"]}
        for field in ("last_accuracy", "best_accuracy", "errors", "agreement",
                      "examples_per_second"):
            row[f"{field}_mean"], row[f"{field}_std"] = mean_std([r[field] for r in recs])
        row["error_rate_mean"], row["error_rate_std"] = mean_std(
            [1 - r["last_accuracy"] for r in recs])
        # the gap: each seed against the scratch student of its seed and its own teacher
        triples = []
        for r in recs:
            t = teachers.get(r["teacher_workdir"]) if r["teacher_workdir"] else None
            s = by_key.get(("scratch", r["seed"]))
            if role == "student" and t is not None and s is not None:
                triples.append((r, s, t))
        row["gap_closed_per_seed"] = [gap_closed(r["last_accuracy"], s["last_accuracy"],
                                                 t["last_accuracy"]) for r, s, t in triples]
        row["gap_closed_mean"], row["gap_closed_std"] = mean_std(row["gap_closed_per_seed"])
        if triples:
            m, s, t = (float(np.mean([x[i]["last_accuracy"] for x in triples])) for i in range(3))
            row["gap_closed_of_means"] = gap_closed(m, s, t)
            mb, sb = (float(np.mean([x[i]["best_accuracy"] for x in triples])) for i in range(2))
            row["gap_closed_best_of_means"] = gap_closed(mb, sb, t)
        else:
            row["gap_closed_of_means"] = row["gap_closed_best_of_means"] = None
        per_class = np.asarray([[np.nan if a is None else a for a in r["per_class_accuracy"]]
                                for r in recs], np.float64)
        row["per_class_accuracy_mean"] = [None if np.isnan(a) else float(a)
                                          for a in per_class.mean(0)]
        row["worst_classes"] = []
        paired = [(r, teachers.get(r["teacher_workdir"])) for r in recs]
        paired = [(r, t) for r, t in paired if t is not None]
        if role != "teacher" and paired:
            diff = np.asarray([[np.nan if a is None or b is None else a - b
                                for a, b in zip(r["per_class_accuracy"], t["per_class_accuracy"])]
                               for r, t in paired], np.float64).mean(0)
            teacher_pc = np.asarray([[np.nan if a is None else a for a in t["per_class_accuracy"]]
                                     for _, t in paired], np.float64).mean(0)
            row["per_class_vs_teacher"] = [None if np.isnan(d) else float(d) for d in diff]
            k = 3 if len(diff) <= 20 else 5
            order = [int(c) for c in np.argsort(np.nan_to_num(diff, nan=np.inf), kind="stable")]
            row["worst_classes"] = [  # the k most negative differences (none if none is)
                {"class": c, "student": float(per_class[:, c].mean()),
                 "teacher": float(teacher_pc[c]), "difference": float(diff[c])}
                for c in order if diff[c] < 0][:k]
        if published is not None and suite_name == "cifar100":
            row["published_top1"] = published.get(name)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output


def _pct(mean, std=None, digits=2, n=2) -> str:
    """`mean` (and `std`, for more than one seed) as percentages."""
    if mean is None:
        return "-"
    if std is None or n < 2:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def _num(value, spec) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _gap(row) -> str:
    per_seed = [g for g in row.get("gap_closed_per_seed", []) if g is not None]
    if row["role"] != "student":
        return "-"
    of_means = _num(row["gap_closed_of_means"], ".1%")
    if len(per_seed) > 1:
        return f"{of_means} (per seed {row['gap_closed_mean']:.1%} ± {row['gap_closed_std']:.1%})"
    return of_means


def _worst(row) -> str:
    return ", ".join(f"{w['class']} ({100 * w['difference']:+.1f})" for w in row["worst_classes"]
                     ) or "-"


def suite_markdown(suite: dict) -> list[str]:
    rows, name = suite["rows"], suite["name"]
    n_seeds = len(suite["seeds"])
    lines = [f"## {suite['title']}", "",
             f"Configs: `{suite['config_files']}`. Seeds: {', '.join(map(str, suite['seeds']))}"
             + (" (the teacher: one run, seed 0, shared by every student)"
                if suite["shared_teacher"] else " (each seed trains its own teacher)") + ". "
             f"{suite['eval_examples']:,} eval examples. Top-1 in %, mean ± sample std over "
             f"{n_seeds} seed{'s' if n_seeds > 1 else ''}.", ""]
    if name == "hinton":
        pub = suite["published"]
        header = ["model", "seeds", "test errors (last eval)", "error % (last)",
                  "error % (best eval)", "gap closed", "agreement w/ teacher %",
                  f"published errors (of {pub['test_examples']:,})", "published error %"]
        body = []
        for r in rows:
            published_errors = pub.get(f"{r['name']}_errors")
            best_err = (None if r["best_accuracy_mean"] is None
                        else 1 - r["best_accuracy_mean"])
            body.append([r["name"] + f" ({r['model']})", str(r["n"]),
                         (f"{r['errors_mean']:.1f} ± {r['errors_std']:.1f}" if r["n"] > 1
                          else f"{r['errors_mean']:.0f}") + f" of {r['eval_examples']:,}",
                         _pct(r["error_rate_mean"], r["error_rate_std"], n=r["n"]),
                         _pct(best_err, r["best_accuracy_std"], n=r["n"]), _gap(r),
                         _pct(r["agreement_mean"], r["agreement_std"], n=r["n"]),
                         _num(published_errors, "d"),
                         _num(None if published_errors is None
                              else 100 * published_errors / pub["test_examples"], ".2f")])
        lines += _table(header, body)
        lines += ["", (f"Published gap closed: {pub['gap_closed']:.1%} "
                  f"(({pub['scratch_errors']} - {pub['distilled_errors']}) / "
                  f"({pub['scratch_errors']} - {pub['teacher_errors']}))."), ""]
        per_seed = [["seed " + str(s)] for s in suite["seeds"]]
        recs = {(r["name"], r["seed"]): r for r in suite["runs"]}
        for i, s in enumerate(suite["seeds"]):
            for n in ("teacher", "scratch", "distilled"):
                r = recs.get((n, s))
                per_seed[i].append("-" if r is None
                                   else f"{r['errors']} ({_pct(1 - r['last_accuracy'])})")
            t, sc, d = (recs.get((n, s)) for n in ("teacher", "scratch", "distilled"))
            g = (gap_closed(d["last_accuracy"], sc["last_accuracy"], t["last_accuracy"])
                 if t and sc and d else None)
            per_seed[i].append(_num(g, ".1%"))
        lines += ["Per seed: test errors (error %) at the last eval.", ""]
        lines += _table(["seed", "teacher", "scratch", "distilled", "gap closed"], per_seed)
    else:
        cifar = name == "cifar100"
        header = ["model", "seeds", "top-1 last", "top-1 best", "agreement w/ teacher",
                  "gap closed (last)", "gap closed (best)", "params", "train ex/s",
                  "classes lost most vs teacher (points)"]
        if cifar:
            header.insert(4, "published")
        body = []
        for r in rows:
            label = r["name"] if r["role"] == "student" else f"{r['name']} ({r['model']})"
            n = r["n"]
            line = [label, str(n), _pct(r["last_accuracy_mean"], r["last_accuracy_std"], n=n),
                    _pct(r["best_accuracy_mean"], r["best_accuracy_std"], n=n),
                    _pct(r["agreement_mean"], r["agreement_std"], n=n), _gap(r),
                    _num(r["gap_closed_best_of_means"], ".1%") if r["role"] == "student" else "-",
                    f"{r['params']:,}", _num(r["examples_per_second_mean"], ",.0f"), _worst(r)]
            if cifar:
                line.insert(4, _num(r.get("published_top1"), ".2f"))
            body.append(line)
        lines += _table(header, body)
        classes = len(rows[0]["per_class_accuracy_mean"]) if rows else 0
        if 0 < classes <= 20:
            lines += ["", "Per-class top-1 (%) at the last eval, mean over seeds:", ""]
            pc_rows = [[str(c)] + [_pct(r["per_class_accuracy_mean"][c], digits=1) for r in rows]
                       for c in range(classes)]
            lines += _table(["class"] + [r["name"] for r in rows], pc_rows)
    lines += [""] + [f"Note: {n}" for n in suite["notes"]] + [""]
    return lines


def markdown(result: dict) -> str:
    lines = ["# Accuracy benchmark", "",
             f"`{result['command']}`", "",
             (f"{result['date']}; {result['environment']['device_count']} x "
             f"{result['environment']['device_kind']} ({result['environment']['backend']}), "
             f"jax {result['environment']['jax']}; wall time "
             f"{_num(result.get('wall_s'), '.0f')} s."), "",
             ("Gap closed = (student - scratch) / (teacher - scratch) on top-1, of the means over "
             "seeds (and its mean ± std per seed, each seed against the scratch student of its "
             "seed); '-' where the teacher is not above the scratch student. Agreement: top-1 "
             "agreement of the final student with its teacher on the eval split. Params: the "
             "deployed model (aux modules such as adapters and embedding heads excluded). "
             "Train ex/s: each run's own training throughput (compilation, eval and "
             "checkpoints excluded; a method's step includes its teacher's forward pass), as "
             "measured on this machine while the run trained."), ""]
    for suite in result["suites"].values():
        lines += suite_markdown(suite)
    if result.get("plots"):
        lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in result["plots"].items()] + [""]
    lines += [f"Note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "device_count": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit}


def suite_result(suite: Suite, records: list[dict]) -> dict:
    eval_examples = records[0]["eval_examples"] if records else 0
    return {"name": suite.name, "title": suite.title, "config_files": suite.config_files,
            "seeds": sorted({r.seed for r in suite.runs if r.role != "teacher"}
                            or {r.seed for r in suite.runs}),
            "names": suite.names, "shared_teacher": suite.shared_teacher,
            "published": suite.published, "notes": suite.notes,
            "eval_examples": eval_examples, "runs": records,
            "rows": summarize(suite.name, suite.names, records, suite.published)}


def write_outputs(result: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "accuracy.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "accuracy.md"), "w") as f:
        f.write(markdown(result))


def load_throughput(path: str) -> list[dict]:
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and {"pair", "mode", "examples_per_second"} <= set(r)
            for r in records):
        raise ValueError(f"--throughput_json={path}: expected the list of records "
                         "benchmarks/throughput.py writes (pair, mode, examples_per_second, ...)")
    return records


def finish_report(result: dict, out: str, throughput_json: str = "", log=print) -> dict:
    """Adds the plots (and the throughput records) to `result`, writes everything."""
    notes = [n for n in result.get("notes", []) if not n.startswith(("throughput", "plots"))]
    result["throughput"] = None
    if throughput_json:
        result["throughput"] = {"source": os.path.abspath(throughput_json),
                                "records": load_throughput(throughput_json)}
    else:
        notes.append("throughput plot skipped: no --throughput_json given (write one with "
                     "`python -m benchmarks.throughput --out=DIR`)")
    files, plot_notes = plots.make_plots(result, out)
    result["plots"] = files
    result["notes"] = notes + plot_notes
    write_outputs(result, out)
    for n in result["notes"]:
        log(f"note: {n}")
    return result


def run_suites(suites: list[Suite], out: str, *, flags_used: dict, command: str,
               throughput_json: str = "", log=print) -> dict:
    """Trains and measures every run of `suites`; writes and returns the result."""
    if throughput_json:
        load_throughput(throughput_json)  # fail before hours of training, not after
    validate(suites)
    start = time.perf_counter()
    result = {"benchmark": "accuracy", "command": command, "flags": flags_used,
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "environment": environment(), "wall_s": None, "suites": {}, "notes": []}
    predictions: dict[str, np.ndarray] = {}
    for suite in suites:
        records = []
        for i, run in enumerate(suite.runs, 1):
            log(f"[{suite.name} {i}/{len(suite.runs)}] {run.name} seed {run.seed} -> "
                f"{run.workdir}")
            try:
                rec = measure(run, predictions, log=log)
            except SystemExit:  # a preemption notice: the run saved a checkpoint and stopped
                log(f"stopped during {suite.name}/{run.name}/seed{run.seed}; the results so far "
                    f"are in {out}; rerun the same command to resume (finished runs are "
                    "reused, not retrained)")
                raise
            records.append(rec)
            log(f"[{suite.name} {i}/{len(suite.runs)}] {run.name} seed {run.seed}: top-1 last "
                f"{rec['last_accuracy']:.4f} best {rec['best_accuracy']:.4f}"
                + (f" agreement {rec['agreement']:.4f}" if rec["agreement"] is not None else "")
                + (f" ({rec['wall_s']:.0f} s)" if rec["wall_s"] is not None else ""))
            result["suites"][suite.name] = suite_result(suite, records)
            result["wall_s"] = time.perf_counter() - start
            write_outputs(result, out)  # an interrupted benchmark keeps what it finished
    result["wall_s"] = time.perf_counter() - start
    return finish_report(result, out, throughput_json, log=log)


def _quiet_read_only(record) -> bool:
    """Drops Orbax's warnings that a read-only manager (every teacher load) is read-only."""
    message = record.getMessage()
    return not ("read_only=True" in message or "Given directory is read only" in message)


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory`, for every program however small."""
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out=DIR is required (results and the runs' work dirs go there)")
    out = os.path.abspath(FLAGS.out)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax's per-save INFO lines drown the progress
        logging.get_absl_logger().addFilter(_quiet_read_only)
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
