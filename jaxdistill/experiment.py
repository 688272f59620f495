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

from jaxdistill import bias, population, run_record, validate
from jaxdistill.generate import generate_text
from jaxdistill.logs import RUN_LOG
from jaxdistill.population_config import drop_population
from jaxdistill.run_setup import prepare_run
from jaxdistill.tasks.cross_tokenizer import teacher_stage_config
from jaxdistill.train import (
    PAIR_METRICS,
    SUMMARY,
    evaluate_other_student,
    load_teachers,
    train_and_evaluate,
)


def teacher_config(config) -> ml_collections.ConfigDict:
    """The supervised run that trains `config.teacher.model` with `config.teacher.train`."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.student.model, c.student.kwargs = config.teacher.model, config.teacher.kwargs
        c.student.num_classes, c.student.dtype = config.teacher.num_classes, "float32"
        c.student.quantization = "none"  # the teacher stays full precision
        c.teacher.model, c.teacher.checkpoint, c.baseline = "", "", False
        c.onpolicy.lambda_, c.seqkd.enabled = 0.0, False  # on the dataset's completions
        c.num_steps = config.teacher.train.num_steps
        c.optimizer.learning_rate = config.teacher.train.learning_rate
        c.data.augment = config.teacher.train.augment
        drop_population(c)
        c.objective = ml_collections.ConfigDict({"ce": {"weight": 1.0}})
        c.student.pruning.method = "none"  # the teacher trains dense
        if config.task == "cross_tokenizer":  # the teacher reads its own tokens
            teacher_stage_config(c)
    return c


def scratch_config(config) -> ml_collections.ConfigDict:
    """The same student, data and optimizer as `config`, trained on hard labels alone."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.teacher.model, c.teacher.checkpoint, c.baseline = "", "", False
        c.onpolicy.lambda_, c.seqkd.enabled = 0.0, False  # on the dataset's completions
        c.objective = ml_collections.ConfigDict({"ce": {"weight": 1.0}})
        drop_population(c)
    return c


def run(config, workdir: str) -> dict:
    """Runs the experiment described by `config` into `workdir`; returns its summary.

    Every stage's config is validated before the first one starts, so a bad field fails
    before anything is trained or written."""
    validate.check_workdir(workdir)
    workdir = os.path.abspath(os.path.expanduser(workdir))  # not a folder named '~'
    config = copy.deepcopy(config)
    validate.check_config(config)  # under the user's names: teacher.train.* included
    validate.check_run_paths(config, workdir)
    trains_teacher = bool(config.teacher.model and not config.teacher.checkpoint
                          and not config.teacher.store and not config.teacher.hf_checkpoint)
    stages = []  # (name, config, workdir)
    if trains_teacher:
        stages.append(("teacher", teacher_config(config), os.path.join(workdir, "teacher")))
    if config.baseline:
        stages.append(("scratch", scratch_config(config), os.path.join(workdir, "scratch")))
    stages.append(("student", config, workdir))
    # all refusals before anything is written; the user's own config first
    for name, cfg, wd in sorted(stages, key=lambda stage: stage[0] != "student"):
        with validate.teacher_stage(name == "teacher"):
            required = not (name == "student" and trains_teacher)
            if name == "student" and cfg.population.size:  # N students: their whole step
                setup = population.prepare_population(
                    cfg, teacher_checkpoint_required=required).setup
            else:
                setup = prepare_run(cfg, teacher_checkpoint_required=required)
            if setup.store is not None:  # the store's fingerprint needs the teacher's params
                load_teachers(setup)
            run_record.check(cfg, wd)
            validate.check_resume(cfg, wd)
    if trains_teacher:
        config.teacher.checkpoint = os.path.join(workdir, "teacher")
    log = RUN_LOG.to_file(workdir)
    summaries = {}
    for name, cfg, wd in stages:
        _announce(name, cfg, wd, log if name == stages[0][0] else None)
        train = (population.train_population if name == "student" and cfg.population.size
                 else train_and_evaluate)  # N students in one step: jaxdistill.population
        summaries[name] = train(cfg, wd)
    if config.population.size:
        return _population_summary(summaries, workdir)
    summary = merge_summaries(summaries)
    if "scratch" in summaries and "agreement" in summary:  # the baseline of the agreement
        scratch = evaluate_other_student(prepare_run(config), os.path.join(workdir, "scratch"))
        summary.update({f"scratch_{k}": scratch[k] for k in PAIR_METRICS if k in scratch})
    bias.attach(summary)
    if config.task == "causal_lm" and config.lm.sample_tokens and jax.process_count() == 1:
        # one process: the sampler restores each model onto its first device
        runs = {"teacher": config.teacher.checkpoint, **{n: wd for n, _, wd in stages}}
        summary["samples"] = lm_samples(config, {n: wd for n, wd in runs.items()
                                                 if n != "teacher" or config.teacher.model})
    if jax.process_index() == 0:
        with open(os.path.join(workdir, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        if len(summaries) > 1 or "teacher_model" in summary:
            print(comparison_table(summary), flush=True)
    return summary


def _population_summary(summaries: dict[str, dict], workdir: str) -> dict:
    """Writes and prints the summary of a population experiment (`population.merge_summaries`)."""
    summary = population.merge_summaries(summaries)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        print(population.table(summary), flush=True)
    return summary


def _announce(stage: str, cfg, workdir: str, log: str | None) -> None:
    """Prints (process 0) a header naming what a stage trains, from what, into where."""
    if jax.process_index() != 0:
        return
    steps = f"{cfg.num_steps} steps on {cfg.data.name}"
    what = {"teacher": f"teacher {cfg.student.model}: trained here, supervised, {steps}",
            "scratch": f"student {cfg.student.model} from scratch: ce only, {steps}",
            "student": f"student {cfg.student.model} distilled from teacher {cfg.teacher.model}"
                       f" (restored from {cfg.teacher.checkpoint or cfg.teacher.hf_checkpoint}): "
                       f"{', '.join(cfg.objective)}, {steps}"}[stage]
    print(f"== {what}; into {workdir}" + (f" (full log: {log})" if log else ""), flush=True)


def lm_samples(config, workdirs: dict[str, str]) -> dict[str, str]:
    """A short sample of each run's model (stage name -> workdir) from `config.lm`'s prompt
    (temperature 0.8, top-k 40, seeded by config.seed)."""
    return {name: generate_text(wd, config.lm.sample_prompt,
                                max_new_tokens=config.lm.sample_tokens, seed=config.seed,
                                temperature=0.8, top_k=40)
            for name, wd in workdirs.items()}


def merge_summaries(summaries: dict[str, dict]) -> dict:
    """The distilled run's summary plus the scratch run's student metrics as `scratch_*`
    and the teacher run's throughput."""
    summary = dict(summaries["student"])
    per = next(k for k in summary if k.endswith("_per_second"))
    if "scratch" in summaries:
        summary.update({f"scratch_{k.removeprefix('student_')}": v
                        for k, v in summaries["scratch"].items()
                        if k.startswith("student_") and not k.startswith(("student_model",
                                                                          "student_params",
                                                                          "student_flops"))})
        summary[f"scratch_{per}"] = summaries["scratch"][per]
        summary["scratch_params_sha256"] = summaries["scratch"]["student_params_sha256"]
    if "teacher" in summaries:
        summary[f"teacher_{per}"] = summaries["teacher"][per]
    return summary


# (header, summary key without the model prefix, format) per task
_COLUMNS = {
    "classification": (("top-1 acc", "accuracy", "{:.4f}"),),
    "causal_lm": (("perplexity", "perplexity", "{:.3f}"), ("token acc", "accuracy", "{:.4f}")),
    "cross_tokenizer": (("perplexity", "perplexity", "{:.3f}"),
                        ("token acc", "accuracy", "{:.4f}")),  # teacher: per student token
}


def comparison_table(s: dict) -> str:
    """Teacher / scratch student / distilled student: the task's metrics, agreement with
    the teacher, size, FLOPs and training speed."""
    task = s.get("task", "classification")
    columns = _COLUMNS[task]
    lm = task in ("causal_lm", "cross_tokenizer")
    unit, short = ("token", "tok") if lm else ("example", "ex")
    per = f"{unit}s_per_second"

    def metrics(prefix):
        return tuple(fmt.format(s[f"{prefix}_{key}"]) for _, key, fmt in columns)

    def speed(key):
        return f"{s[key]:,.0f}" if key in s else "-"
    rows = [("model", *(h for h, _, _ in columns), "agreement", "params", f"FLOPs/{unit}",
             f"train {short}/s")]
    if "teacher_model" in s:
        rows.append((f"teacher ({s['teacher_model']})", *metrics("teacher"), "-",
                     f"{s['teacher_params']:,}", f"{s[f'teacher_flops_per_{unit}']:,.0f}",
                     speed(f"teacher_{per}")))
    student = (f"{s['student_params']:,}", f"{s[f'student_flops_per_{unit}']:,.0f}")
    if "scratch_params_sha256" in s:
        rows.append((f"student from scratch ({s['student_model']})", *metrics("scratch"),
                     f"{s['scratch_agreement']:.4f}" if "scratch_agreement" in s else "-",
                     *student, speed(f"scratch_{per}")))
    rows.append((f"distilled student ({s['student_model']})", *metrics("student"),
                 f"{s['agreement']:.4f}" if "agreement" in s else "-", *student, speed(per)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if "scratch_params_sha256" in s and lm:
        lines.append(f"distillation gain over scratch: perplexity {s['scratch_perplexity']:.3f} "
                     f"-> {s['student_perplexity']:.3f} "
                     f"({100 * (s['student_perplexity'] / s['scratch_perplexity'] - 1):+.1f}%)")
    elif "scratch_params_sha256" in s:
        lines.append(f"distillation gain over scratch: "
                     f"{100 * (s['student_accuracy'] - s['scratch_accuracy']):+.2f} points")
    if "token_buckets" in s.get("bias", {}):  # the LM bias report's rare bucket
        lines.append(bias.rare_tokens_line(s["bias"]))
    names = {"teacher": "teacher", "scratch": "student from scratch",
             "student": "distilled student"}
    for name, text in s.get("samples", {}).items():
        lines.append(f"\nsample, {names[name]}:\n{text}")
    return "\n".join(lines)
