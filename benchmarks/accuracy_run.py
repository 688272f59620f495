"""The accuracy benchmark's runs: train (or reuse) each planned run, restore its final student,
measure it on the eval split, and write the results as they come.

`run_suites` trains and measures every run of the suites; `measure` is one run's record (also
used by benchmarks/pruning.py). A run directory remembers its config (`RUN_CONFIG`): a
finished run is reused, one made with another config is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.accuracy_plan import ROOT, Run, Suite, validate
from benchmarks.accuracy_report import finish_report, load_throughput, write_outputs
from benchmarks.accuracy_stats import suite_result
from jaxdistill import bias, checkpoint, data
from jaxdistill.run_setup import model_cost, prepare_run
from jaxdistill.step import forward
from jaxdistill.train import SUMMARY, train_and_evaluate

RUN_CONFIG = "benchmark_config.json"  # the config a run directory was made with


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
    """Accuracy of each class (`bias.per_class`; None for a class absent from the eval split)."""
    count = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)
    return [a if n else None for a, n in zip(bias.per_class(count, correct), count)]


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
        "augment": run.config.data.augment,
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


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory`, for every program however small."""
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
