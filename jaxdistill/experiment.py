"""A full distillation experiment: teacher (trained here if needed), the student from
scratch as a baseline, and the distilled student, with a comparison table.

Layout of `workdir`: `teacher/` (when `config.teacher.checkpoint` is empty), `scratch/`
(when `config.baseline`), and the distilled run itself at the top, with the
experiment's `summary.json` merging all three.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import ml_collections

from jaxdistill.run_setup import prepare_run
from jaxdistill.train import SUMMARY, train_and_evaluate


def teacher_config(config) -> ml_collections.ConfigDict:
    """The supervised run that trains `config.teacher.model` with `config.teacher.train`."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.student.model, c.student.kwargs = config.teacher.model, config.teacher.kwargs
        c.student.num_classes, c.student.dtype = config.teacher.num_classes, "float32"
        c.teacher.model, c.teacher.checkpoint, c.baseline = "", "", False
        c.num_steps = config.teacher.train.num_steps
        c.optimizer.learning_rate = config.teacher.train.learning_rate
        c.data.augment = config.teacher.train.augment
        c.objective = ml_collections.ConfigDict({"ce": {"weight": 1.0}})
    return c


def scratch_config(config) -> ml_collections.ConfigDict:
    """The same student, data and optimizer as `config`, trained on hard labels alone."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.teacher.model, c.teacher.checkpoint, c.baseline = "", "", False
        c.objective = ml_collections.ConfigDict({"ce": {"weight": 1.0}})
    return c


def run(config, workdir: str) -> dict:
    """Runs the experiment described by `config` into `workdir`; returns its summary.

    Every stage's config is validated before the first one starts, so a bad field fails
    before anything is trained or written."""
    workdir = os.path.abspath(workdir)
    config = copy.deepcopy(config)
    trains_teacher = bool(config.teacher.model and not config.teacher.checkpoint
                          and not config.teacher.store)
    stages = []  # (name, config, workdir)
    if trains_teacher:
        stages.append(("teacher", teacher_config(config), os.path.join(workdir, "teacher")))
    if config.baseline:
        stages.append(("scratch", scratch_config(config), os.path.join(workdir, "scratch")))
    stages.append(("student", config, workdir))
    for name, cfg, _ in stages:
        prepare_run(cfg, teacher_checkpoint_required=not (name == "student" and trains_teacher))
    if trains_teacher:
        config.teacher.checkpoint = os.path.join(workdir, "teacher")
    summaries = {name: train_and_evaluate(cfg, wd) for name, cfg, wd in stages}
    summary = dict(summaries["student"])
    if "scratch" in summaries:
        summary["scratch_accuracy"] = summaries["scratch"]["student_accuracy"]
        summary["scratch_examples_per_second"] = summaries["scratch"]["examples_per_second"]
        summary["scratch_params_sha256"] = summaries["scratch"]["student_params_sha256"]
    if "teacher" in summaries:
        summary["teacher_examples_per_second"] = summaries["teacher"]["examples_per_second"]
    if jax.process_index() == 0:
        with open(os.path.join(workdir, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        if len(summaries) > 1 or "teacher_accuracy" in summary:
            print(comparison_table(summary), flush=True)
    return summary


def comparison_table(s: dict) -> str:
    """Teacher / scratch student / distilled student: accuracy, agreement, size, speed."""
    rows = [("model", "top-1 acc", "agreement", "params", "FLOPs/example", "train ex/s")]
    if "teacher_accuracy" in s:
        rows.append((f"teacher ({s['teacher_model']})", f"{s['teacher_accuracy']:.4f}", "1.0000",
                     f"{s['teacher_params']:,}", f"{s['teacher_flops_per_example']:,.0f}",
                     f"{s['teacher_examples_per_second']:,.0f}"
                     if "teacher_examples_per_second" in s else "-"))
    student = (f"{s['student_params']:,}", f"{s['student_flops_per_example']:,.0f}")
    if "scratch_accuracy" in s:
        rows.append((f"student from scratch ({s['student_model']})", f"{s['scratch_accuracy']:.4f}",
                     "-", *student, f"{s['scratch_examples_per_second']:,.0f}"))
    rows.append((f"distilled student ({s['student_model']})", f"{s['student_accuracy']:.4f}",
                 f"{s['agreement']:.4f}" if "agreement" in s else "-", *student,
                 f"{s['examples_per_second']:,.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if "scratch_accuracy" in s:
        lines.append(f"distillation gain over scratch: "
                     f"{100 * (s['student_accuracy'] - s['scratch_accuracy']):+.2f} points")
    return "\n".join(lines)
