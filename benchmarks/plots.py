"""PNG plots of the benchmark results (matplotlib, Agg backend; `pip install -e '.[bench]'`).

`make_plots(result, out)` draws, from the dict benchmarks/accuracy.py writes to accuracy.json:
  <suite>_accuracy.png            top-1 per model (teacher, scratch, each method), mean over
                                  seeds with sample-std error bars, last and best eval side by
                                  side; the published numbers as markers where a suite has them
  <suite>_accuracy_vs_params.png  top-1 against parameter count (log scale): the teacher, the
                                  scratch student and each method (methods share the student's
                                  size; they are spread a little sideways to stay readable)
  <suite>_per_class.png           per-class top-1 of the teacher, the scratch student (and its
                                  baselines, e.g. with the teacher's jitter) and the best
                                  distilled student, grouped bars per class (up to 20 classes)
  hinton_errors.png               the Hinton suite's test error (%) beside the paper's
  throughput.png                  examples/s per mode from a benchmarks/throughput.py JSON
                                  (`result['throughput']`), one panel per (pair, dtype)
Returns ({plot name: file name}, notes).
"""

from __future__ import annotations

import os

# the throughput modes, named by the method each one times
MODE_LABELS = {"student": "scratch (ce)", "teacher_forward": "teacher forward",
               "kd_online": "kd (online teacher)", "feature": "kd + {feature}",
               "kd_offline": "kd (teacher store)"}
FEATURE_METHOD = {"hint": "fitnet", "at": "at"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _over(suite: dict) -> str:
    n = len(suite["seeds"])
    return f"mean ± sample std over {n} seeds" if n > 1 else "1 seed (no error bars)"


def _colour(role: str) -> str:
    return {"teacher": "tab:gray", "scratch": "tab:orange",
            "baseline": "tab:green"}.get(role, "tab:blue")


def accuracy_plot(suite: dict, path: str) -> None:
    """Top-1 (%) per model with error bars (last and best eval), published markers."""
    plt = _pyplot()
    rows = suite["rows"]
    names = [r["name"] for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows) + 2), 4.5))
    width = 0.38
    for offset, field, alpha, label in ((-width / 2, "last", 1.0, "last eval"),
                                        (width / 2, "best", 0.45, "best eval")):
        means = [100 * (r[f"{field}_accuracy_mean"] or 0) for r in rows]
        stds = [100 * (r[f"{field}_accuracy_std"] or 0) for r in rows]
        ax.bar([i + offset for i in x], means, width, yerr=stds, capsize=3, alpha=alpha,
               color=[_colour(r["role"]) for r in rows], edgecolor="black", linewidth=0.5,
               label=label)
    published = [(i, r.get("published_top1")) for i, r in enumerate(rows)
                 if r.get("published_top1") is not None]
    if published:
        ax.scatter([i for i, _ in published], [v for _, v in published], marker="D",
                   color="black", zorder=3)
    for r in rows:
        if r["role"] in ("teacher", "scratch"):
            ax.axhline(100 * r["last_accuracy_mean"], color=_colour(r["role"]), linestyle="--",
                       linewidth=0.8)
    values = [100 * r[f"{f}_accuracy_mean"] for r in rows for f in ("last", "best")
              if r[f"{f}_accuracy_mean"] is not None] + [v for _, v in published]
    if values:
        spread = max(values) - min(values)
        ax.set_ylim(max(0.0, min(values) - max(2.0, spread)), min(100.0, max(values) + 1.0))
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    baselines = ", ".join(r["name"] for r in rows if r["role"] == "baseline")
    ax.set_title(f"{suite['title']}\n{_over(suite)}; grey: teacher, orange: scratch"
                 + (f", green: {baselines}" if baselines else ""), fontsize=9)
    from matplotlib.patches import Patch
    handles = [Patch(facecolor="tab:blue", edgecolor="black", label="last eval"),
               Patch(facecolor="tab:blue", alpha=0.45, edgecolor="black", label="best eval")]
    if published:
        handles.append(ax.scatter([], [], marker="D", color="black", label="published"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _count(x, _=None) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def accuracy_vs_params_plot(suite: dict, path: str) -> None:
    """Top-1 (%, last eval) against parameter count, log x."""
    plt = _pyplot()
    rows = suite["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    students = [r for r in rows if r["role"] in ("baseline", "student")]
    for r in rows:
        x = float(r["params"])
        if r in students and len(students) > 1:  # spread the methods sideways
            k = students.index(r)
            x *= 1.0 + 0.25 * (k / (len(students) - 1) - 0.5)
        ax.errorbar([x], [100 * r["last_accuracy_mean"]], yerr=[100 * r["last_accuracy_std"]],
                    fmt="s" if r["role"] != "student" else "o", color=_colour(r["role"]),
                    capsize=3, markersize=7 if r["role"] != "student" else 5)
        ax.annotate(r["name"], (x, 100 * r["last_accuracy_mean"]), textcoords="offset points",
                    xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters (deployed model)")
    ax.set_ylabel("top-1 accuracy (%), last eval")
    ax.set_title(f"{suite['title']}\naccuracy against size (methods share the student's "
                 "size)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hinton_plot(suite: dict, path: str) -> None:
    """Test error (%) of teacher / scratch / distilled, here and in the paper."""
    plt = _pyplot()
    rows = {r["name"]: r for r in suite["rows"]}
    names = list(rows)  # teacher, scratch, baselines (no published number), distilled
    pub = suite["published"]
    fig, ax = plt.subplots(figsize=(6.0 + 0.8 * max(0, len(names) - 3), 4.2))
    x = list(range(len(names)))
    ax.bar([i - 0.2 for i in x], [100 * rows[n]["error_rate_mean"] for n in names], 0.4,
           yerr=[100 * rows[n]["error_rate_std"] for n in names], capsize=3,
           color=[_colour(rows[n]["role"]) for n in names], edgecolor="black", linewidth=0.5,
           label=f"here ({rows[names[0]]['eval_examples']:,} test examples)")
    published = [(i, n) for i, n in enumerate(names) if f"{n}_errors" in pub]
    ax.bar([i + 0.2 for i, _ in published],
           [100 * pub[f"{n}_errors"] / pub["test_examples"] for _, n in published], 0.4,
           color="white", edgecolor="black", hatch="//",
           label=f"Hinton et al. 2015 ({pub['test_examples']:,} test examples)")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{suite['title']}\n{_over(suite)}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_rows(suite: dict) -> list[dict]:
    """The rows the per-class plot compares: teacher, scratch, baselines, and the distilled
    student with the highest mean top-1 (the only one in the Hinton suite)."""
    rows = suite["rows"]
    students = [r for r in rows if r["role"] == "student" and r["last_accuracy_mean"] is not None]
    best = [max(students, key=lambda r: r["last_accuracy_mean"])] if students else []
    return [r for r in rows if r["role"] != "student"] + best


def per_class_plot(suite: dict, path: str) -> None:
    """Per-class top-1 (%, last eval, mean over seeds): one bar group per class, one bar per
    model of `per_class_rows`."""
    plt = _pyplot()
    rows = per_class_rows(suite)
    students = sum(r["role"] == "student" for r in suite["rows"])
    classes = len(rows[0]["per_class_accuracy_mean"])
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.2 * classes * len(rows) + 2), 4.8))
    for j, r in enumerate(rows):
        xs = [c + (j - (len(rows) - 1) / 2) * width for c in range(classes)]
        values = [100 * (a or 0) for a in r["per_class_accuracy_mean"]]
        label = (f"{r['name']} (best of {students} distilled)"
                 if r["role"] == "student" and students > 1 else r["name"])
        ax.bar(xs, values, width, color=_colour(r["role"]), edgecolor="black", linewidth=0.5,
               label=label)
    values = [100 * a for r in rows for a in r["per_class_accuracy_mean"] if a is not None]
    ax.set_ylim(max(0.0, min(values) - 2.0), 100.5)
    ax.set_xticks(range(classes))
    ax.set_xlabel("class")
    ax.set_ylabel("top-1 accuracy (%), last eval")
    n = len(suite["seeds"])
    ax.set_title(f"{suite['title']}: per-class accuracy\nmean over {n} seed{'s' * (n > 1)}",
                 fontsize=9)
    ax.legend(fontsize=8, ncol=len(rows), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mode_label(record: dict) -> str:
    label = MODE_LABELS.get(record["mode"], record["mode"])
    if "{feature}" in label:
        feature = record.get("feature_term")
        if feature is None:
            try:
                try:
                    from benchmarks import pairs
                except ImportError:  # run as a script from benchmarks/
                    import pairs
                feature = pairs.PAIRS[record["pair"]].feature_term[0]
            except (ImportError, KeyError):
                feature = "feature"
        label = label.format(feature=FEATURE_METHOD.get(feature, feature))
    return label


def throughput_plot(records: list[dict], path: str) -> None:
    """Examples/s per mode; one panel per (pair, dtype), one bar group per batch size."""
    plt = _pyplot()
    panels = {}
    for r in records:
        panels.setdefault((r["pair"], r.get("dtype", "")), []).append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, ((pair, dtype), recs) in zip(axes[0], panels.items()):
        modes = list(dict.fromkeys(r["mode"] for r in recs))
        batches = sorted({r["batch_size"] for r in recs})
        width = 0.8 / len(batches)
        for j, b in enumerate(batches):
            by_mode = {r["mode"]: r for r in recs if r["batch_size"] == b}
            xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(modes))]
            ax.bar(xs, [by_mode[m]["examples_per_second"] if m in by_mode else 0 for m in modes],
                   width, label=f"batch {b}", edgecolor="black", linewidth=0.5)
        labels = [_mode_label(next(r for r in recs if r["mode"] == m)) for m in modes]
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("examples / s")
        kind = recs[0].get("device_kind", "")
        devices = recs[0].get("devices", "")
        ax.set_title(f"{pair} ({recs[0].get('teacher', '?')} -> {recs[0].get('student', '?')}), "
                     f"{dtype}\n{devices} x {kind}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(result: dict, out: str) -> tuple[dict[str, str], list[str]]:
    """Every plot `result` supports, written into `out`; returns ({name: file}, notes)."""
    try:
        _pyplot()
    except ImportError:
        return {}, ["plots skipped: matplotlib is not installed (pip install -e '.[bench]')"]
    files, notes = {}, []
    for name, suite in result.get("suites", {}).items():
        if not suite.get("rows"):
            continue
        for key, fn in ((f"{name}_accuracy", accuracy_plot),
                        (f"{name}_accuracy_vs_params", accuracy_vs_params_plot)):
            fn(suite, os.path.join(out, f"{key}.png"))
            files[key] = f"{key}.png"
        classes = len(suite["rows"][0].get("per_class_accuracy_mean") or [])
        if 0 < classes <= 20:
            per_class_plot(suite, os.path.join(out, f"{name}_per_class.png"))
            files[f"{name}_per_class"] = f"{name}_per_class.png"
        elif classes:
            notes.append(f"{name}: per-class plot skipped ({classes} classes; at most 20 drawn)")
        if name == "hinton" and suite.get("published"):
            hinton_plot(suite, os.path.join(out, "hinton_errors.png"))
            files["hinton_errors"] = "hinton_errors.png"
    throughput = result.get("throughput")
    if throughput and throughput.get("records"):
        throughput_plot(throughput["records"], os.path.join(out, "throughput.png"))
        files["throughput"] = "throughput.png"
    elif os.path.exists(os.path.join(out, "throughput.png")):
        os.remove(os.path.join(out, "throughput.png"))  # stale: from an earlier report
    return files, notes
