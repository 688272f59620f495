"""The accuracy benchmark's report: accuracy.json, the Markdown tables of accuracy.md and the
plots (benchmarks/plots.py), from the result dict that accuracy_run builds.

`finish_report` adds the plots (and a benchmarks/throughput.py JSON) and writes everything;
`markdown` renders the tables alone.
"""

from __future__ import annotations

import json
import os

from benchmarks import plots
from benchmarks.accuracy_stats import GAP_ROLES, gap_closed
from jaxdistill import run_record


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
    if row["role"] not in GAP_ROLES:
        return "-"
    of_means = _num(row["gap_closed_of_means"], ".1%")
    if len(per_seed) > 1:
        return f"{of_means} (per seed {row['gap_closed_mean']:.1%} ± {row['gap_closed_std']:.1%})"
    return of_means


def _worst(row) -> str:
    return ", ".join(f"{w['class']} ({100 * w['difference']:+.1f})" for w in row["worst_classes"]
                     ) or "-"


def _label(row) -> str:
    return row["name"] if row["role"] == "student" else f"{row['name']} ({row['model']})"


def gap_sentence(rows: list[dict]) -> list[str]:
    """What the gap is made of: the share each baseline (the teacher's augmentation alone) and
    the best student close of the teacher-scratch gap, where the suite has a baseline."""
    baselines = [r for r in rows if r["role"] == "baseline"]
    students = [r for r in rows if r["role"] == "student" and r["last_accuracy_mean"] is not None]
    by_name = {r["name"]: r for r in rows}
    if not baselines or "teacher" not in by_name or "scratch" not in by_name:
        return []
    t, s = by_name["teacher"], by_name["scratch"]
    parts = [f"{b['name']} {_pct(b['last_accuracy_mean'])}% "
             f"({_num(b['gap_closed_of_means'], '.1%')} of it)" for b in baselines]
    if students:
        best = max(students, key=lambda r: r["last_accuracy_mean"])
        parts.append(f"{'the best student, ' if len(students) > 1 else ''}{best['name']} "
                     f"{_pct(best['last_accuracy_mean'])}% "
                     f"({_num(best['gap_closed_of_means'], '.1%')})")
    return [(f"The gap: teacher {_pct(t['last_accuracy_mean'])}% against the scratch student's "
             f"{_pct(s['last_accuracy_mean'])}% (top-1, last eval, means); "
             + "; ".join(parts) + "."), ""]


def _hinton_tables(suite: dict) -> list[str]:
    rows, pub = suite["rows"], suite["published"]
    header = ["model", "seeds", "test errors (last eval)", "error % (last)",
              "error % (best eval)", "gap closed", "agreement w/ teacher %",
              f"published errors (of {pub['test_examples']:,})", "published error %"]
    body = []
    for r in rows:
        published_errors = pub.get(f"{r['name']}_errors")
        best_err = None if r["best_accuracy_mean"] is None else 1 - r["best_accuracy_mean"]
        body.append([f"{r['name']} ({r['model']})", str(r["n"]),
                     (f"{r['errors_mean']:.1f} ± {r['errors_std']:.1f}" if r["n"] > 1
                      else f"{r['errors_mean']:.0f}") + f" of {r['eval_examples']:,}",
                     _pct(r["error_rate_mean"], r["error_rate_std"], n=r["n"]),
                     _pct(best_err, r["best_accuracy_std"], n=r["n"]), _gap(r),
                     _pct(r["agreement_mean"], r["agreement_std"], n=r["n"]),
                     _num(published_errors, "d"),
                     _num(None if published_errors is None
                          else 100 * published_errors / pub["test_examples"], ".2f")])
    lines = _table(header, body)
    lines += ["", (f"Published gap closed: {pub['gap_closed']:.1%} "
              f"(({pub['scratch_errors']} - {pub['distilled_errors']}) / "
              f"({pub['scratch_errors']} - {pub['teacher_errors']}))."), ""]
    lines += gap_sentence(rows)
    names = [r["name"] for r in rows]
    gapped = [r["name"] for r in rows if r["role"] in GAP_ROLES]
    recs = {(r["name"], r["seed"]): r for r in suite["runs"]}
    per_seed = []
    for s in suite["seeds"]:
        line = ["seed " + str(s)]
        for n in names:
            r = recs.get((n, s))
            line.append("-" if r is None else f"{r['errors']} ({_pct(1 - r['last_accuracy'])})")
        t, sc = recs.get(("teacher", s)), recs.get(("scratch", s))
        for n in gapped:
            d = recs.get((n, s))
            line.append(_num(gap_closed(d["last_accuracy"], sc["last_accuracy"],
                                        t["last_accuracy"]) if t and sc and d else None, ".1%"))
        per_seed.append(line)
    lines += ["Per seed: test errors (error %) at the last eval.", ""]
    gap_header = ([f"gap closed ({n})" for n in gapped] if len(gapped) > 1 else ["gap closed"])
    return lines + _table(["seed", *names, *gap_header], per_seed)


def _methods_tables(suite: dict) -> list[str]:
    rows = suite["rows"]
    cifar = suite["name"] == "cifar100"
    header = ["model", "seeds", "top-1 last", "top-1 best", "agreement w/ teacher",
              "gap closed (last)", "gap closed (best)", "params", "train ex/s",
              "classes lost most vs teacher (points)"]
    if cifar:
        header.insert(4, "published")
    body = []
    for r in rows:
        n = r["n"]
        line = [_label(r), str(n), _pct(r["last_accuracy_mean"], r["last_accuracy_std"], n=n),
                _pct(r["best_accuracy_mean"], r["best_accuracy_std"], n=n),
                _pct(r["agreement_mean"], r["agreement_std"], n=n), _gap(r),
                _num(r["gap_closed_best_of_means"], ".1%") if r["role"] in GAP_ROLES else "-",
                f"{r['params']:,}", _num(r["examples_per_second_mean"], ",.0f"), _worst(r)]
        if cifar:
            line.insert(4, _num(r.get("published_top1"), ".2f"))
        body.append(line)
    lines = _table(header, body) + [""] + gap_sentence(rows)
    classes = len(rows[0]["per_class_accuracy_mean"]) if rows else 0
    if 0 < classes <= 20:
        lines += ["Per-class top-1 (%) at the last eval, mean over seeds:", ""]
        pc_rows = [[str(c)] + [_pct(r["per_class_accuracy_mean"][c], digits=1) for r in rows]
                   for c in range(classes)]
        lines += _table(["class"] + [r["name"] for r in rows], pc_rows)
    return lines


def suite_markdown(suite: dict) -> list[str]:
    n_seeds = len(suite["seeds"])
    lines = [f"## {suite['title']}", "",
             f"Configs: `{suite['config_files']}`. Seeds: {', '.join(map(str, suite['seeds']))}"
             + (" (the teacher: one run, seed 0, shared by every student)"
                if suite["shared_teacher"] else " (each seed trains its own teacher)") + ". "
             f"{suite['eval_examples']:,} eval examples. Top-1 in %, mean ± sample std over "
             f"{n_seeds} seed{'s' if n_seeds > 1 else ''}.", ""]
    lines += _hinton_tables(suite) if suite["name"] == "hinton" else _methods_tables(suite)
    return lines + [""] + [f"Note: {n}" for n in suite["notes"]] + [""]


def markdown(result: dict) -> str:
    lines = ["# Accuracy benchmark", "",
             f"`{result['command']}`", "",
             (f"{result['date']}; {result['environment']['device_count']} x "
             f"{result['environment']['device_kind']} ({result['environment']['backend']}), "
             f"jax {result['environment']['jax']}; wall time "
             f"{_num(result.get('wall_s'), '.0f')} s."), "",
             ("Gap closed = (student - scratch) / (teacher - scratch) on top-1, of the means over "
             "seeds (and its mean ± std per seed, each seed against the scratch student of its "
             "seed); '-' where the teacher is not above the scratch student. A baseline such as "
             "scratch_jitter (the scratch student with the teacher's augmentation) gets the same "
             "column: the part of the gap that needs no teacher. Agreement: top-1 "
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


def write_report(out: str, stem: str, result: dict, table: str | None = None) -> None:
    """Writes `result` to <out>/<stem>.json and, given, the Markdown `table` to <out>/<stem>.md,
    each replaced whole (an interrupted benchmark leaves the old file or the new)."""
    os.makedirs(out, exist_ok=True)
    run_record.write_atomically(os.path.join(out, f"{stem}.json"),
                                json.dumps(result, indent=2) + "\n")
    if table is not None:
        run_record.write_atomically(os.path.join(out, f"{stem}.md"), table)


def write_outputs(result: dict, out: str) -> None:
    write_report(out, "accuracy", result, markdown(result))


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
