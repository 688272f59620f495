"""The accuracy benchmark's statistics over seeds: mean and sample std, the fraction of the
teacher-student gap closed, per-class accuracy and the classes lost most against the teacher.

`summarize` turns the per-run records (accuracy_run.measure) into one row per model;
`suite_result` is a suite's entry of accuracy.json.
"""

from __future__ import annotations

import numpy as np

GAP_ROLES = ("baseline", "student")  # the rows whose gap closed is reported


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


def _per_class(records) -> np.ndarray:
    """[runs, classes] per-class accuracy, NaN for a class absent from the eval split."""
    return np.asarray([[np.nan if a is None else a for a in r["per_class_accuracy"]]
                       for r in records], np.float64)


def _gap_fields(row: dict, recs, by_key, teachers) -> None:
    """The gap closed, each seed against the scratch student of its seed and its own teacher,
    per seed and of the means (last eval; `_best_` of the best evals)."""
    triples = []
    for r in recs:
        t = teachers.get(r["teacher_workdir"]) if r["teacher_workdir"] else None
        s = by_key.get(("scratch", r["seed"]))
        if row["role"] in GAP_ROLES and t is not None and s is not None:
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


def _class_fields(row: dict, recs, teachers) -> None:
    """Per-class accuracy (mean over seeds) and the classes lost most against the teacher."""
    per_class = _per_class(recs)
    row["per_class_accuracy_mean"] = [None if np.isnan(a) else float(a)
                                      for a in per_class.mean(0)]
    row["worst_classes"] = []
    paired = [(r, teachers.get(r["teacher_workdir"])) for r in recs]
    paired = [(r, t) for r, t in paired if t is not None]
    if row["role"] == "teacher" or not paired:
        return
    diff = (_per_class([r for r, _ in paired]) - _per_class([t for _, t in paired])).mean(0)
    teacher_pc = _per_class([t for _, t in paired]).mean(0)
    row["per_class_vs_teacher"] = [None if np.isnan(d) else float(d) for d in diff]
    k = 3 if len(diff) <= 20 else 5
    order = [int(c) for c in np.argsort(np.nan_to_num(diff, nan=np.inf), kind="stable")]
    row["worst_classes"] = [  # the k most negative differences (none if none is)
        {"class": c, "student": float(per_class[:, c].mean()),
         "teacher": float(teacher_pc[c]), "difference": float(diff[c])}
        for c in order if diff[c] < 0][:k]


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
        row = {"suite": suite_name, "name": name, "role": recs[0]["role"],
               "seeds": [r["seed"] for r in recs], "n": len(recs),
               "model": recs[0]["model"], "params": recs[0]["params"],
               "flops_per_example": recs[0]["flops_per_example"],
               "eval_examples": recs[0]["eval_examples"]}
        for field in ("last_accuracy", "best_accuracy", "errors", "agreement",
                      "examples_per_second"):
            row[f"{field}_mean"], row[f"{field}_std"] = mean_std([r[field] for r in recs])
        row["error_rate_mean"], row["error_rate_std"] = mean_std(
            [1 - r["last_accuracy"] for r in recs])
        _gap_fields(row, recs, by_key, teachers)
        _class_fields(row, recs, teachers)
        if published is not None and suite_name == "cifar100":
            row["published_top1"] = published.get(name)
        rows.append(row)
    return rows


def suite_result(suite, records: list[dict]) -> dict:
    """A suite's entry of accuracy.json: its plan, its run records, its summary rows."""
    eval_examples = records[0]["eval_examples"] if records else 0
    return {"name": suite.name, "title": suite.title, "config_files": suite.config_files,
            "seeds": sorted({r.seed for r in suite.runs if r.role != "teacher"}
                            or {r.seed for r in suite.runs}),
            "names": suite.names, "shared_teacher": suite.shared_teacher,
            "published": suite.published, "notes": suite.notes,
            "eval_examples": eval_examples, "runs": records,
            "rows": summarize(suite.name, suite.names, records, suite.published)}
