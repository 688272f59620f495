r"""Per-method ablation on mnist5k (issue 14 §2): is a method's place in the methods table the
method, its recipe (weight, warm-up, which features) or the scale?

For each method of `configs/mnist_methods.py` (default: at, sp, rkd, fkl, crd), at one seed:

- one population (`jaxdistill.population`: the members share each batch's teacher pass and each
  equals its separate run) whose members vary the method's own settings: its term's weight at
  x0.1, x0.3, x1, x3 and x10 the recipe's, the recipe with a 100-step learning-rate warm-up, and
  the method's float knobs (RKD's distance and angle parts alone; FKL's temperature, with and
  without the tau^2 factor KD applies, so that `fkl` at T = 4 and weight 0.9 x 16 is exactly
  the `kd` recipe; CRD's NCE temperature);
- separate runs of what a member cannot vary: other features, CRD's uniform negatives;
- the scratch student and the KD student of the same seed, the two rows every setting is
  read against.

`--steps_scale` multiplies every run's steps (as `benchmarks.accuracy` does) and
`--grid=recipe` keeps only the recipe's own setting per method: with both, the scale question
(does a method's gap to scratch change with a longer schedule?).

Top-1 and agreement are each run's last eval on mnist5k's 1,000 test digits (one digit is 0.1
point). Output in `--out`: ablation.json (flags, every row) and ablation.md (the table, also
printed). Finished runs are read back, not retrained.

  python -m benchmarks.ablation --out=/tmp/ablation --teacher=/tmp/acc_methods/runs/methods/teacher
  python -m benchmarks.ablation --out=/tmp/ablation_x3 --teacher=T --steps_scale=3 --grid=recipe
  python -m benchmarks.ablation --out=/tmp/ablation_quick --quick   # digits, a few steps
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from absl import app, flags

from benchmarks.accuracy_plan import _quick_methods, load_config, scale_steps
from benchmarks.accuracy_report import write_report
from benchmarks.qad import execute
from jaxdistill import population
from jaxdistill.defaults import set_fields
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.logs import quiet_library_logs
from jaxdistill.recipes import METHODS as RECIPES
from jaxdistill.run_setup import prepare_run

FLAGS = flags.FLAGS
METHODS = ("at", "sp", "rkd", "fkl", "crd")
WEIGHT_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)
WARMUP_STEPS = 100


def variants(method: str, config) -> dict[str, dict]:
    """What a member cannot vary (features, sampling), as separate runs: label -> fields."""
    pair = lambda term, f: {f"objective.{term}.student_feature": f,
                            f"objective.{term}.teacher_feature": f}
    if method == "at":
        return {"stage2 only (the pre-issue-14 recipe)": pair("at", ("stage2",)),
                "stage1 only": pair("at", ("stage1",))}
    if method == "sp":
        return {"stage1 (14x14)": pair("sp", "stage1"), "embedding": pair("sp", "embedding")}
    if method == "rkd":
        return {"stage2 (flattened)": pair("rkd", "stage2")}
    if method == "crd":
        n = config.objective.crd.num_negatives
        return {"uniform negatives (the pre-issue-14 sampling)": {"objective.crd.negatives":
                                                                  "uniform"},
                f"{2 * n:,} negatives": {"objective.crd.num_negatives": 2 * n}}
    return {}


def define_flags() -> None:
    flags.DEFINE_string("out", "", "output directory (required)")
    flags.DEFINE_string("teacher", "", "finished teacher run of configs/mnist_methods.py (e.g. "
                        "benchmarks.accuracy's runs/methods/teacher); '' trains one into <out>")
    flags.DEFINE_list("methods", list(METHODS), "methods of configs/mnist_methods.py")
    flags.DEFINE_integer("seed", 0, "the seed of every run (the teacher's is its own)")
    flags.DEFINE_float("steps_scale", 1.0, "multiplies every student run's step counts")
    flags.DEFINE_enum("grid", "full", ("full", "recipe"), "full: every setting; recipe: only "
                      "each method's own recipe (with --steps_scale: the scale question)")
    flags.DEFINE_bool("quick", False, "tiny mode: digits, a few dozen steps")


def method_config(method: str, *, seed: int, scale: float, quick: bool, teacher: str):
    """configs/mnist_methods.py:<method> at `seed` and `scale`, distilled from `teacher`."""
    c = load_config("mnist_methods", f"{method},tiny" if quick else method)
    if quick:
        _quick_methods(c)
    c.seed = seed
    c.baseline = False
    c.teacher.checkpoint = teacher
    scale_steps(c, scale)
    return c


def _term(method: str) -> str:
    """The method's own objective term; ValueError unless its recipe is 'ce' and one term."""
    terms = [t for t in load_config("mnist_methods", method).objective if t != "ce"]
    if len(terms) != 1:
        raise ValueError(f"--methods: '{method}' trains with {terms}; the ablation varies a "
                         "recipe of 'ce' and one term (e.g. at, sp, rkd, pkt, crd, fkl)")
    return terms[0]


def check_methods(methods) -> None:
    """ValueError unless every method is a recipe of 'ce' and one term."""
    if not methods:
        raise ValueError(f"--methods is empty; e.g. --methods={','.join(METHODS)}")
    unknown = [m for m in methods if m not in RECIPES]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {list(RECIPES)}")
    for m in methods:
        _term(m)


def members(method: str, config) -> list[tuple[str, dict]]:
    """(label, member overrides) of the method's population: weights, warm-up, float knobs."""
    term = _term(method)
    spec = config.objective[term]
    w = spec.weight
    rows = [(f"weight {s:g}x ({w * s:g})", {f"objective.{term}.weight": w * s})
            for s in WEIGHT_SCALES]
    rows.append((f"{WARMUP_STEPS}-step lr warm-up", {"optimizer.warmup_steps": WARMUP_STEPS}))
    if method == "rkd":
        rows += [("distance only", {"objective.rkd.angle_weight": 0.0}),
                 ("angle only", {"objective.rkd.distance_weight": 0.0})]
    if method == "fkl":  # KD is fkl x tau^2 at tau = 4 (configs' kd: weight 0.9, T = 4)
        rows += [(f"T {t:g}, weight {w:g} x {t * t:g}",
                  {"objective.fkl.temperature": t, "objective.fkl.weight": w * t * t})
                 for t in (2.0, 4.0)]
        rows.append((f"T 4, weight {w:g} (no tau^2)", {"objective.fkl.temperature": 4.0}))
    if method == "crd":
        rows += [(f"NCE temperature {t:g}", {"objective.crd.temperature": t}) for t in (0.1, 0.2)]
    return rows


def _with(config, fields: dict):
    c = config.copy_and_resolve_references()
    set_fields(c, fields)
    return c


@dataclasses.dataclass
class Entry:
    """One training of the ablation: a separate run (one label) or a population (a label per
    member, in member order)."""

    method: str
    labels: list[str]
    config: ml_collections.ConfigDict
    workdir: str

    @property
    def is_population(self) -> bool:
        return bool(self.config.population.size)


def plan(methods, *, out: str, teacher: str, seed: int, scale: float, grid: str,
         quick: bool) -> list[Entry]:
    """Every training, in table order: scratch, kd, then each method's population and
    variants (`grid='recipe'`: its recipe alone)."""
    cfg = lambda m: method_config(m, seed=seed, scale=scale, quick=quick, teacher=teacher)
    entries = [Entry("scratch", ["ce only"], scratch_config(cfg("kd")),
                     os.path.join(out, "scratch")),
               Entry("kd", ["recipe"], cfg("kd"), os.path.join(out, "kd"))]
    for m in methods:
        base = cfg(m)
        if grid == "recipe":
            entries.append(Entry(m, ["recipe"], base, os.path.join(out, m)))
            continue
        grid_rows = members(m, base)
        pop = base.copy_and_resolve_references()
        pop.population.size = len(grid_rows)
        pop.population.members = tuple(fields for _, fields in grid_rows)
        entries.append(Entry(m, [label for label, _ in grid_rows], pop,
                             os.path.join(out, m, "population")))
        entries += [Entry(m, [label], _with(base, fields), os.path.join(out, m, f"variant{i}"))
                    for i, (label, fields) in enumerate(variants(m, base).items())]
    return entries


def check(entries: list[Entry]) -> None:
    """`prepare_run` (a population's `prepare_population`) of every entry, before anything
    trains; the teacher need not exist yet."""
    for e in entries:
        c = e.config.copy_and_resolve_references()
        c.teacher.checkpoint = ""
        prepare = population.prepare_population if e.is_population else prepare_run
        prepare(c, teacher_checkpoint_required=False)


def _row(method: str, setting: str, summary: dict, run: str) -> dict:
    return {"method": method, "setting": setting, "run": run,
            "top1": summary["student_accuracy"],
            "agreement": summary.get("agreement")}  # scratch: none


def run_ablation(methods, *, out: str, teacher: str = "", seed: int = 0, scale: float = 1.0,
                 grid: str = "full", quick: bool = False, log=print) -> dict:
    """Checks every config, trains the teacher where none is given, then trains (or reads
    back) every entry; returns {'rows': [...]} in table order."""
    entries = plan(methods, out=out, teacher=teacher or os.path.join(out, "teacher"), seed=seed,
                   scale=scale, grid=grid, quick=quick)
    check(entries)
    if not teacher:
        execute(teacher_config(method_config("kd", seed=0, scale=1.0, quick=quick, teacher="")),
                os.path.join(out, "teacher"))
    rows = []
    for e in entries:
        if e.is_population:
            summary = population.train_population(e.config, e.workdir)
            rows += [_row(e.method, label, s, "population")
                     for label, s in zip(e.labels, summary["members"])]
        else:
            rows.append(_row(e.method, e.labels[0], execute(e.config, e.workdir), "separate"))
        log(markdown({"rows": rows}))
    return {"rows": rows}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(result: dict) -> str:
    """The table: every row's top-1 and agreement, and its top-1 against scratch's (points)."""
    rows = result["rows"]
    scratch = next(r["top1"] for r in rows if r["method"] == "scratch")
    lines = ["| method | setting | top-1 % | vs scratch (points) | agreement % | run |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['setting']} | {100 * r['top1']:.1f} | "
              f"{100 * (r['top1'] - scratch):+.1f} | {_pct(r['agreement'])} | {r['run']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    quiet_library_logs()
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    try:
        check_methods(FLAGS.methods)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    result = run_ablation(FLAGS.methods, out=FLAGS.out, teacher=FLAGS.teacher, seed=FLAGS.seed,
                          scale=FLAGS.steps_scale, grid=FLAGS.grid, quick=FLAGS.quick)
    result["flags"] = {k: FLAGS[k].value for k in ("methods", "teacher", "seed", "steps_scale",
                                                  "grid", "quick")}
    table = markdown(result)
    print(table)
    write_report(FLAGS.out, "ablation", result, table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
