"""A sweep's output: the trials table (JSON + Markdown), the best recipe as a config file
that `jaxdistill.main` runs as is, and the plots (held-out metric against parameters and
against measured latency per student shape, with the Pareto front; against each sampled
field)."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from jaxdistill import run_record
from jaxdistill.defaults import base_config

BEST_CONFIG = "best_config.py"


def best_record(records: list[dict], mode: str) -> dict:
    """The best trial that finished the last rung."""
    complete = [r for r in records if r["state"] == "complete"]
    sign = -1.0 if mode == "max" else 1.0
    return min(complete, key=lambda r: (sign * r["value"], r["group"], r["bracket"], r["trial"]))


def pareto_front(points: list[tuple[float, float]], mode: str) -> list[tuple[float, float]]:
    """The (cost, value) points that no other point beats on both: lower or equal cost and a
    better or equal value (`mode` 'max' or 'min'), sorted by cost."""
    better = (lambda a, b: a >= b) if mode == "max" else (lambda a, b: a <= b)
    return sorted({p for p in points
                   if not any(q != p and q[0] <= p[0] and better(q[1], p[1]) for q in points)})


def config_from_record(record: dict):
    """A ConfigDict from a run's config.json record, built on the base config so that tuple
    fields are tuples again."""
    config = base_config()

    def tuples(value):  # JSON keeps a config's tuples as lists
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    def fill(node, values):
        for key, value in values.items():
            if key in node and hasattr(node[key], "items") and isinstance(value, dict):
                fill(node[key], value)
            else:
                node[key] = tuples(value)
    fill(config, record)
    return config


def best_config_source(record: dict, member_config_json: str, command: str) -> str:
    """The text of best_config.py: the best trial's resolved config (its population
    member's equivalent separate run, at the last rung's steps)."""
    return (f'"""The best recipe of a jaxdistill sweep: {record["metric"]} '
            f'{record["value"]:.4f} after {record["steps"]} steps.\n\n'
            f'Settings: {json.dumps(record["settings"], sort_keys=True)}; shape: '
            f'{json.dumps(record["shape"], sort_keys=True)}.\nFound by: {command}\n\n'
            f'  python -m jaxdistill.main --config=THIS_FILE --workdir=DIR\n"""\n\n'
            "import json\n\nfrom jaxdistill.sweep_report import config_from_record\n\n"
            f"RECORD = json.loads(r'''{member_config_json}''')\n\n\n"
            "def get_config(arg=None):\n"
            "    if arg:\n"
            "        raise ValueError(f'best_config.py takes no argument, got {arg!r}')\n"
            "    return config_from_record(RECORD)\n")


def student_latency_ms(config, runs: int = 30) -> float:
    """Median milliseconds of one eval-mode forward pass of `config`'s student on one
    example (jitted, after a warm-up call), on this machine's first device."""
    from jaxdistill.run_setup import prepare_run
    from jaxdistill.step import forward
    setup = prepare_run(config)
    state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
    batch = {k: np.zeros(v.shape, v.dtype) for k, v in
             setup.task.abstract_batch(setup.info, 1).items()}
    inputs = setup.task.inputs(batch, None, train=False)
    fn = jax.jit(lambda p, s, x: forward(setup.ctx.student_def, p, s, x, train=False,
                                         **inputs.kwargs)[0])
    args = (state.params["student"], state.batch_stats, inputs.x)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def markdown(records: list[dict]) -> str:
    """One row per trial: shape, settings, the metric at each rung, state."""
    rungs = sorted({k for r in records for k in r["rungs"]})
    fields = sorted({k for r in records for k in r["settings"]})
    shapes = sorted({k for r in records for k in r["shape"]})
    metric = records[0]["metric"] if records else "metric"
    head = ["group", "bracket", "trial", *shapes, *fields, "params",
            *(f"{metric} @{s}" for s in rungs), "state"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [r["group"], r["bracket"], r["trial"], *(r["shape"][k] for k in shapes),
                 *(f"{r['settings'][k]:.4g}" if isinstance(r["settings"].get(k), float)
                   else r["settings"].get(k, "-") for k in fields), r["params"],
                 *(f"{r['rungs'][s]:.4f}" if s in r["rungs"] else "-" for s in rungs),
                 r["state"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], latency: dict[int, float], path: str, mode: str) -> None:
    """sweep.png: the finished trials' metric against parameters and against latency (the
    Pareto front of each), and every trial's first-rung metric against each sampled field."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    fields = sorted({k for r in records for k in r["settings"]})
    complete = [r for r in records if r["state"] == "complete"]
    first = min(k for r in records for k in r["rungs"])
    metric = records[0]["metric"]
    fig, axes = plt.subplots(1, 2 + len(fields), figsize=(4.2 * (2 + len(fields)), 3.8),
                             squeeze=False)
    for ax, cost, label in ((axes[0, 0], lambda r: r["params"], "parameters"),
                            (axes[0, 1], lambda r: latency[r["group"]], "latency (ms, batch 1)")):
        points = [(float(cost(r)), r["value"]) for r in complete]
        for g in sorted({r["group"] for r in complete}):
            xs = [(float(cost(r)), r["value"]) for r in complete if r["group"] == g]
            ax.scatter(*zip(*xs), s=24, label=f"group {g}", zorder=3)
        front = pareto_front(points, mode)
        if front:
            ax.plot(*zip(*front), "k--o", lw=1, ms=10, mfc="none", label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (last rung)")
        ax.legend(fontsize=7)
    for ax, field in zip(axes[0, 2:], fields):
        for g in sorted({r["group"] for r in records}):
            xs = [(r["settings"][field], r["rungs"][first]) for r in records
                  if r["group"] == g and field in r["settings"]]
            ax.scatter(*zip(*xs), s=18, label=f"group {g}")
        ax.set_xlabel(field)
        ax.set_ylabel(f"{metric} @ {first} steps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(records: list[dict], config, space, workdir: str, config_file: str,
          space_file: str, mode: str) -> dict[str, str]:
    """Writes trials.json, trials.md, best_config.py and sweep.png into `workdir`; returns
    their paths."""
    from jaxdistill.sweep import group_config
    latency = {g: student_latency_ms(group_config(config, shape))
               for g, shape in enumerate(space.groups)}
    records = [{**r, "latency_ms": latency[r["group"]]} for r in records]
    best = best_record(records, mode)
    member_dir = os.path.join(workdir, f"group{best['group']}", f"bracket{best['bracket']}",
                              f"rung{len(space.rungs) - 1}", "members",
                              str(best["member_index"]))
    with open(os.path.join(member_dir, "config.json")) as f:
        member_json = f.read()
    command = (f"python -m jaxdistill.sweep --config={config_file} --space={space_file} "
               f"--workdir={workdir}")
    paths = {name: os.path.join(workdir, name) for name in
             ("trials.json", "trials.md", BEST_CONFIG, "sweep.png")}
    run_record.write_atomically(paths["trials.json"], json.dumps(
        {"trials": records, "best": best, "latency_ms": latency, "command": command}, indent=2))
    run_record.write_atomically(paths["trials.md"], markdown(records))
    run_record.write_atomically(paths[BEST_CONFIG], best_config_source(best, member_json.strip(),
                                                                       command))
    plot(records, latency, paths["sweep.png"], mode)
    return {k.split(".")[0]: v for k, v in paths.items()}
