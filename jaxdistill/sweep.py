"""Recipe search: optuna samplers, successive halving, students of one shape as a population.

  python -m jaxdistill.sweep --config=configs/mnist_kd.py --space=configs/mnist_sweep.py \\
      --workdir=/tmp/mnist_sweep

`--space` names a Python file whose `get_space()` returns the search (see
configs/mnist_sweep.py)::

    {"fields": {"objective.kd.temperature": {"low": 1.0, "high": 20.0, "log": True},
                "objective.kd.weight": {"low": 0.1, "high": 1.0},
                "student.kwargs.widths": {"choices": [(64, 64), (256, 256)]}},
     "sampler": "tpe",        # 'tpe' | 'random' (optuna's TPESampler / RandomSampler)
     "trials": 8,             # trials sampled per student shape and bracket
     "brackets": 1,           # successive-halving brackets run one after another
     "rungs": (150, 450),     # optimizer steps of each rung
     "eta": 3,                # a rung keeps the best ceil(n / eta) trials
     "seed": 0}               # the samplers' seed

Fields a population member may set (`jaxdistill.population_config`: seed, learning rate,
weight decay, warm-up, term weights and float fields) are *sampled*; every other field is
a shape of the student (a width, a depth, a model) and must list `choices`: each choice is
searched as its own group, one after another. In a group the sampled trials of a rung train
together as one population (`jaxdistill.population`): one compiled step, one teacher pass per
batch for all of them.

Successive halving (Jamieson & Talwalkar 2016; synchronous, as in Hyperband, Li et al. 2018):
all trials train for the first rung's steps, the best `ceil(n / eta)` by the task's held-out
metric (accuracy, max; perplexity, min) train again for the next rung's, and so on. Each rung
is a complete run of its budget (its own learning-rate schedule), so a rung compares
finished recipes of one length. Trials that reach the last rung are told to optuna as
complete with their metric there; the others as pruned. Later brackets sample from what
earlier ones found (TPE).

Resumable: the optuna study is a journal file in the workdir and every population run is
resumable on its own (a finished one is read from its summary.json), so a killed sweep,
rerun with the same command, retrains nothing that finished. A changed config or space is
refused. Output (`jaxdistill.sweep_report`): trials.json / trials.md, best_config.py (runs
with `jaxdistill.main` as is) and sweep.png.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os

import optuna
from absl import app, flags
from ml_collections import config_flags
from optuna.trial import TrialState

from jaxdistill import experiment, population, population_config, run_record, validate
from jaxdistill.defaults import set_fields
from jaxdistill.tasks import task_class

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
DEFAULTS = {"sampler": "tpe", "trials": 8, "brackets": 1, "rungs": (), "eta": 3, "seed": 0}
STATE = "sweep_state.json"


@dataclasses.dataclass(frozen=True)
class Space:
    """A search: sampled fields (optuna distributions), shape groups, halving settings."""

    sampled: dict  # field -> optuna distribution
    groups: tuple  # each group: {shape field: value}
    sampler: str
    trials: int
    brackets: int
    rungs: tuple
    eta: int
    seed: int
    fingerprint: str


def _distribution(field: str, spec: dict):
    """The optuna distribution of one sampled field's spec."""
    if "choices" in spec:
        return optuna.distributions.CategoricalDistribution(list(spec["choices"]))
    if not {"low", "high"} <= set(spec):
        raise ValueError(f"--space: field {field!r} needs 'choices' or 'low' and 'high', got "
                         f"{sorted(spec)}")
    if spec["low"] >= spec["high"]:
        raise ValueError(f"--space: field {field!r} has low {spec['low']} >= high {spec['high']}")
    if spec.get("int"):
        return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]),
                                                    log=bool(spec.get("log")))
    return optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                  log=bool(spec.get("log")))


def parse_space(raw: dict, config) -> Space:
    """Checks a `get_space()` dict against the run config; one-line errors naming the key."""
    unknown = set(raw) - {"fields", *DEFAULTS}
    if unknown:
        raise ValueError(f"--space: unknown keys {sorted(unknown)}; use 'fields' and "
                         f"{sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **{k: v for k, v in raw.items() if k != "fields"}}
    if settings["sampler"] not in SAMPLERS:
        raise ValueError(f"--space: sampler {settings['sampler']!r} is not one of "
                         f"{sorted(SAMPLERS)}")
    rungs = tuple(int(r) for r in settings["rungs"]) or (int(config.num_steps),)
    if any(r <= 0 for r in rungs) or list(rungs) != sorted(set(rungs)):
        raise ValueError(f"--space: rungs {rungs} must be increasing positive step counts")
    for key in ("trials", "brackets", "eta"):
        if int(settings[key]) < (2 if key == "eta" else 1):
            raise ValueError(f"--space: {key} must be >= {2 if key == 'eta' else 1}, "
                             f"got {settings[key]}")
    sampled, shapes = {}, {}
    for field, spec in dict(raw.get("fields", {})).items():
        try:
            population_config.check_member_field(config, field)
        except ValueError:
            _field_value(config, field)  # a shape field: it must exist
            if "choices" not in spec or not spec["choices"]:
                raise ValueError(f"--space: {field!r} is not a per-member field, so it is "
                                 "searched as student shapes: give it 'choices'") from None
            shapes[field] = list(spec["choices"])
            continue
        sampled[field] = _distribution(field, spec)
    if not sampled:
        raise ValueError("--space: 'fields' samples nothing; give at least one per-member "
                         "field (e.g. objective.kd.temperature)")
    groups = tuple(dict(zip(shapes, values)) for values in itertools.product(*shapes.values()))
    fingerprint = hashlib.sha256(json.dumps(
        {"space": _jsonable(raw), "config": json.loads(run_record.config_json(config, ""))},
        sort_keys=True, default=str).encode()).hexdigest()
    return Space(sampled, groups, settings["sampler"], int(settings["trials"]),
                 int(settings["brackets"]), rungs, int(settings["eta"]), int(settings["seed"]),
                 fingerprint)


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple)
                                 else str(v)))


def _field_value(config, field: str):
    """The value of `field` in `config` (None for an unset model argument under kwargs)."""
    *sections, leaf = field.split(".")
    node = config
    for name in sections:
        if name not in node:
            raise ValueError(f"--space: {field!r} is not a field of the config")
        node = node[name]
    if leaf not in node:
        if sections and sections[-1] == "kwargs":  # a registry model's constructor argument
            return None
        raise ValueError(f"--space: {field!r} is not a field of the config")
    return node[leaf]


def load_space_file(path: str) -> dict:
    """`get_space()` of a Python file."""
    if not os.path.isfile(path):
        raise ValueError(f"--space: no such file {path!r}")
    spec = importlib.util.spec_from_file_location("jaxdistill_sweep_space", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_space"):
        raise ValueError(f"--space: {path} defines no get_space()")
    return dict(module.get_space())


def group_config(config, group: dict):
    """The run config with a group's shape fields set."""
    c = copy.deepcopy(config)
    set_fields(c, group)
    return c


def rung_config(config, budget: int, members: list[dict]):
    """A population of `members` (override dicts) trained for `budget` steps, evaluated and
    checkpointed at its end."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.num_steps, c.baseline = budget, False
        c.eval_every = c.checkpoint_every = 0
        c.population.size, c.population.members = len(members), tuple(members)
    return c


def _study(workdir: str, name: str, space: Space, direction: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(os.path.join(workdir, "optuna.log")))
    sampler = SAMPLERS[space.sampler](seed=space.seed)
    return optuna.create_study(study_name=name, storage=storage, direction=direction,
                               sampler=sampler, load_if_exists=True)


def _read_state(workdir: str, space: Space) -> dict:
    path = os.path.join(workdir, STATE)
    if not os.path.exists(path):
        return {"fingerprint": space.fingerprint, "brackets": {}}
    with open(path) as f:
        state = json.load(f)
    if state["fingerprint"] != space.fingerprint:
        raise ValueError(f"{workdir} holds a sweep of another config or space; use a new "
                         "--workdir (or the same config and --space to resume it)")
    return state


def _write_state(workdir: str, state: dict) -> None:
    run_record.write_atomically(os.path.join(workdir, STATE), json.dumps(state, indent=1))


def _ask(study: optuna.Study, space: Space, entry: dict) -> list[int]:
    """The bracket's trial numbers: asked now, or (after a kill) re-asked with the params
    the killed sweep had drawn, the old trials marked failed."""
    if entry.get("trials"):
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        numbers = []
        for number, params in zip(entry["trials"], entry["params"]):
            if states.get(number) == TrialState.RUNNING:
                study.tell(number, state=TrialState.FAIL)
                study.enqueue_trial(params)
                number = study.ask(space.sampled).number
            numbers.append(number)
        return numbers
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # asked by a sweep killed before it wrote
    return [study.ask(space.sampled).number for _ in range(space.trials)]


def _rank(values: dict[int, float], mode: str, keep: int) -> list[int]:
    """The `keep` best trials (ties by trial order)."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(values, key=lambda n: (sign * values[n], n))[:keep]


def _run_rung(config, workdir: str, members: list[dict]) -> list[dict]:
    """The members' summaries of one population run (read back when it finished)."""
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):  # written once, when the run has finished
        with open(path) as f:
            summary = json.load(f)
        if [m["settings"] for m in summary["members"]] == members and \
                summary["members"][0]["steps"] == config.num_steps:
            return summary["members"]
    return population.train_population(config, workdir)["members"]


def run_sweep(config, space: Space, workdir: str, log=print) -> list[dict]:
    """Runs (or resumes) the search; returns one record per trial (settings, group, the
    metric per rung, final state)."""
    task = task_class(config.task)
    metric, mode = f"student_{task.best_metric}", task.best_mode
    direction = "maximize" if mode == "max" else "minimize"
    os.makedirs(workdir, exist_ok=True)
    config = prepare_teacher(config, workdir, log)
    state = _read_state(workdir, space)
    records = []
    for g, group in enumerate(space.groups):
        gconfig = group_config(config, group)
        study = _study(workdir, f"group{g}", space, direction)
        for b in range(space.brackets):
            key = f"{g}/{b}"
            entry = state["brackets"].setdefault(key, {})
            numbers = _ask(study, space, entry)
            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            entry.update(trials=numbers, params=[trials[n].params for n in numbers])
            entry.setdefault("results", {})
            _write_state(workdir, state)
            alive = list(numbers)
            for r, budget in enumerate(space.rungs):
                rung_dir = os.path.join(workdir, f"group{g}", f"bracket{b}", f"rung{r}")
                members = [trials[n].params for n in alive]
                shape = f" {group}" if group else ""
                log(f"== sweep group {g}{shape}, bracket {b}, rung {r}: {len(alive)} "
                    f"trial(s) x {budget} steps as one population; into {rung_dir}")
                summaries = _run_rung(rung_config(gconfig, budget, members), rung_dir, members)
                values = {n: float(s[metric]) for n, s in zip(alive, summaries)}
                for i, (n, s) in enumerate(zip(alive, summaries)):
                    entry["results"].setdefault(str(numbers.index(n)), {})[str(budget)] = {
                        metric: float(s[metric]), "params": s["student_params"], "member": i}
                _write_state(workdir, state)
                if r + 1 < len(space.rungs):
                    alive = _rank(values, mode, math.ceil(len(alive) / space.eta))
            finished = {t.number: t.state for t in study.get_trials(deepcopy=False)}
            for n in numbers:
                if finished[n] != TrialState.RUNNING:
                    continue
                if n in alive:
                    study.tell(n, values[n])
                else:
                    study.tell(n, state=TrialState.PRUNED)
            for i, n in enumerate(numbers):
                results = entry["results"][str(i)]
                last = max(results, key=int)
                records.append({"group": g, "shape": group, "bracket": b, "trial": i,
                                "settings": entry["params"][i], "metric": metric,
                                "rungs": {int(k): v[metric] for k, v in results.items()},
                                "value": results[last][metric], "steps": int(last),
                                "params": results[last]["params"],
                                "member_index": results[last]["member"],
                                "state": "complete" if int(last) == space.rungs[-1]
                                else "pruned"})
    return records


def prepare_teacher(config, workdir: str, log=print):
    """The config with `teacher.checkpoint` set: the given one, or a teacher trained once
    into <workdir>/teacher (as the demo does) when the config trains its own."""
    if not config.teacher.model or config.teacher.checkpoint or config.teacher.store:
        return config
    from jaxdistill.train import train_and_evaluate
    teacher_dir = os.path.join(workdir, "teacher")
    if not os.path.exists(os.path.join(teacher_dir, "summary.json")):
        log(f"== sweep teacher {config.teacher.model}: trained here; into {teacher_dir}")
        train_and_evaluate(experiment.teacher_config(config), teacher_dir)
    c = copy.deepcopy(config)
    with c.unlocked():
        c.teacher.checkpoint = teacher_dir
    return c


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxdistill import sweep_report
    from jaxdistill.logs import RUN_LOG
    RUN_LOG.quiet(verbose=FLAGS["verbosity"].present)  # as jaxdistill.main: the file keeps all
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = FLAGS.config
    validate.check_config(config)
    space = parse_space(load_space_file(FLAGS.space), config)
    for group in space.groups:
        validate.check_config(group_config(config, group))
    RUN_LOG.to_file(FLAGS.workdir)
    records = run_sweep(config, space, FLAGS.workdir)
    paths = sweep_report.write(records, prepare_teacher(config, FLAGS.workdir), space,
                               FLAGS.workdir, config_flags.get_config_filename(FLAGS["config"]),
                               FLAGS.space, task_class(config.task).best_mode)
    print(sweep_report.markdown(records).rstrip("\n"))
    print("best recipe: " + paths["best_config"] + "\n  python -m jaxdistill.main --config="
          + paths["best_config"] + " --workdir=DIR")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "run config file", lock_config=True)
    flags.DEFINE_string("space", None, "Python file with get_space() (see the module doc)")
    flags.DEFINE_string("workdir", None, "sweep directory (rerun the same command to resume)")
    flags.mark_flags_as_required(["config", "space", "workdir"])
    app.run(main)
