"""A population: N students of one architecture trained at once, in one jitted, sharded step
that runs the teacher's forward pass once per batch (`config.population`).

Members differ in their seed and in per-member hyper-parameters, given as overrides of the
run's config, one dict of dotted fields per member::

    config.population.size = 3
    config.population.members = ({"objective.kd.temperature": 2.0},
                                 {"objective.kd.temperature": 8.0, "optimizer.learning_rate": 0.1},
                                 {"seed": 1, "optimizer.weight_decay": 1e-4})

A member may set `seed` (its init, dropout and loss-term randomness), `optimizer.learning_rate`,
`optimizer.weight_decay`, `optimizer.warmup_steps`, `objective.<term>.weight` and any float
field of a term's loss (`objective.kd.temperature`, `objective.dkd.beta`, ...); everything
else is shared. `member_configs(config)` gives each member's config: the config of the
separate run that the member equals (to float tolerance). The batch, its order
(`config.data.seed`, else `config.seed`) and its augmentation (from `config.seed`) are
shared: with `config.data.augment` set, a member with its own seed matches a separate run
in distribution only.

In the step the members' train states are stacked along a leading axis and `jax.vmap`
runs `step.student_update` over them and over their hyper-parameters (arrays [N]: term
weights and float fields, weight decay, the member's index into the members' learning-rate
schedules, which are evaluated together, N scalars); `step.teacher_step` runs once, outside
the vmap. `config.population.axis` splits the members over a mesh axis.

Output in the workdir: one Orbax run state holding the population (`checkpoints/`: resumable),
`members/<i>/` with member i's config.json, metrics.jsonl (train and eval records) and
summary.json, and `summary.json` with every member's summary (`members`) and settings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill import bias, checkpoint, data, parallel, run_record
from jaxdistill.metrics import MetricWriter, progress_line
from jaxdistill.models import logical_axes
from jaxdistill.objective import Objective
from jaxdistill.optim import learning_rate_schedule, make_optimizer
from jaxdistill.population_config import (
    FIELD,
    member_configs,
    member_value,
    overrides,
    varying,
)
from jaxdistill.preemption import PreemptionWatch
from jaxdistill.run_setup import RunSetup, _state_shardings, prepare_run
from jaxdistill.state import TrainState
from jaxdistill.step import (
    StepContext,
    eval_sums,
    student_update,
    teacher_eval_logits,
    teacher_step,
)

MEMBERS_DIR = "members"


# ------------------------------------------------------------------------- the step

@dataclasses.dataclass(frozen=True)
class PopulationContext:
    """Static parts of the population step: the shared step context (its objective and
    optimizer are the base run's, rebuilt per member from traced values), the optimizer
    config whose structure every member shares, the members' schedules."""

    ctx: StepContext
    optimizer: Any                 # config.optimizer, weight_decay > 0 if any member decays
    num_steps: int
    own: tuple                     # aux terms with their own optimizer: (term, lr) pairs
    schedules: tuple               # member i's learning-rate schedule
    seed: int                      # config.seed: the shared batch's augmentation


def member_objective(objective: Objective, values: dict) -> Objective:
    """`objective` with term weights and fields replaced by `values` {term: {field: x}}."""
    terms = []
    for term in objective.terms:
        new = dict(values.get(term.name, {}))
        if new:
            weight = new.pop("weight", term.weight)
            hparams = tuple(sorted({**dict(term.hparams), **new}.items()))
            term = dataclasses.replace(term, weight=weight, hparams=hparams)
        terms.append(term)
    return dataclasses.replace(objective, terms=tuple(terms))


def member_context(pctx: PopulationContext, hparams: dict) -> StepContext:
    """The step context of the member whose hyper-parameters (scalars, traced) are
    `hparams`: its objective and optimizer."""
    schedules, index = pctx.schedules, hparams["index"]

    def schedule(count):
        return jnp.stack([s(count) for s in schedules])[index] if len(schedules) > 1 else (
            schedules[0](count))
    tx, _ = make_optimizer(pctx.optimizer, pctx.num_steps, dict(pctx.own), schedule=schedule,
                           weight_decay=hparams.get("weight_decay"))
    return dataclasses.replace(pctx.ctx, objective=member_objective(pctx.ctx.objective,
                                                                    hparams["terms"]), tx=tx)


def train_step(pctx: PopulationContext, states: TrainState, hparams: dict, teacher, batch):
    """One step of every member: the teacher once, then the members' updates under `vmap`.
    Returns (states, metrics {name: [N]})."""
    rng = jax.random.fold_in(jax.random.PRNGKey(pctx.seed), 1)  # a run's state.rng
    inputs, teachers = teacher_step(pctx.ctx, rng, states.step[0], teacher, batch)

    def member(state, hp):
        return student_update(member_context(pctx, hp), state, inputs, teachers, batch, teacher)
    return jax.vmap(member)(states, hparams)


def eval_step(ctx: StepContext, states: TrainState, teacher, batch):
    """The task's eval sums of every member ({name: [N, ...]}), the teacher run once."""
    t_logits = teacher_eval_logits(ctx, teacher, batch)
    return jax.vmap(lambda state: eval_sums(ctx, state, t_logits, batch))(states)


# ------------------------------------------------------------------------- setup

@dataclasses.dataclass
class PopulationSetup:
    """A population run resolved before compiling: the base run's setup (member 0's
    config), the members' configs and hyper-parameters, the stacked state's shardings."""

    config: Any
    setup: RunSetup
    members: list
    pctx: PopulationContext
    hparams: dict                  # {'index': [N], 'weight_decay'?: [N], 'terms': {t: {f: [N]}}}
    hparams_sharding: Any
    init_states: Any               # () -> stacked TrainState (jit with out_shardings)
    abstract_states: TrainState
    state_shardings: TrainState

    @property
    def size(self) -> int:
        return len(self.members)


def _stacked(sharding: NamedSharding, axis: str | None) -> NamedSharding:
    return NamedSharding(sharding.mesh, P(axis, *sharding.spec))


def prepare_population(config, **prepare_kwargs) -> PopulationSetup:
    """Validates `config` (population included) and resolves the population run;
    `prepare_kwargs` go to `prepare_run` (e.g. a benchmark's synthetic `info`)."""
    from jaxdistill import validate
    validate.check_config(config)
    members = member_configs(config)
    setup = prepare_run(members[0], **prepare_kwargs)
    n, axis = len(members), config.population.axis or None
    if axis and n % setup.mesh.shape[axis]:
        raise ValueError(f"{FIELD}.size ({n}) must be a multiple of mesh axis {axis!r}'s "
                         f"{setup.mesh.shape[axis]} devices")
    keys = varying(config)
    hparams = {"index": np.arange(n, dtype=np.int32), "terms": {}}
    for key in keys:
        values = np.asarray([member_value(c, key) for c in members], np.float32)
        if key == "optimizer.weight_decay":
            hparams["weight_decay"] = values
        elif key.startswith("objective."):
            _, term, field = key.split(".")
            hparams["terms"].setdefault(term, {})[field] = values
    opt = copy.deepcopy(members[0].optimizer)
    with opt.unlocked():
        opt.weight_decay = max(c.optimizer.weight_decay for c in members)
    if any(k in keys for k in ("optimizer.learning_rate", "optimizer.warmup_steps")):
        schedules = tuple(learning_rate_schedule(c.optimizer, c.num_steps) for c in members)
    else:
        schedules = (setup.schedule,)
    pctx = PopulationContext(setup.ctx, opt, config.num_steps,
                             tuple(setup.ctx.objective.own_learning_rates.items()), schedules,
                             config.seed)
    seeds = jnp.asarray([c.seed for c in members], jnp.uint32)
    tx = member_context(pctx, jax.tree.map(lambda x: x[0], hparams)).tx  # the shared structure

    def init_one(seed):
        state = setup.init_state(jax.random.PRNGKey(seed))
        return state.replace(opt_state=tx.init(state.params),
                             rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1))

    def init_states():
        return jax.vmap(init_one)(seeds)
    abstract = jax.eval_shape(init_states)
    mesh_cfg = config.mesh
    one = _state_shardings(jax.eval_shape(init_one, 0), setup.mesh, mesh_cfg.student_rule,
                           parallel.names_by_path(logical_axes(
                               setup.abstract_state.params["student"])),
                           mesh_cfg.student_axis_rules, "config.mesh.student_axis_rules")
    shardings = jax.tree.map(lambda s: _stacked(s, axis), one)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    hp_sharding = jax.tree.map(lambda _: NamedSharding(setup.mesh, P(axis)), hparams)
    pop = PopulationSetup(config, setup, members, pctx, hparams, hp_sharding, init_states,
                          abstract, shardings)
    jax.eval_shape(functools.partial(train_step, pctx), abstract, hparams,
                   setup.teacher_input_abstract, setup.abstract_batch())
    return pop


def compile_steps(pop: PopulationSetup):
    """The jitted population train step `fn(states, hparams, teacher, batch)` (states
    donated) and eval step `fn(states, teacher, batch)`."""
    setup = pop.setup
    rep = parallel.replicated(setup.mesh)
    teacher_sh = (jax.tree.map(lambda x: x.sharding, setup.teacher_input_abstract)
                  if setup.teacher_input_abstract is not None else None)
    train_fn = jax.jit(functools.partial(train_step, pop.pctx),
                       in_shardings=(pop.state_shardings, pop.hparams_sharding, teacher_sh,
                                     setup.batch_sharding),
                       out_shardings=(pop.state_shardings, rep), donate_argnums=(0,))
    eval_fn = jax.jit(functools.partial(eval_step, setup.ctx),
                      in_shardings=(pop.state_shardings, teacher_sh, setup.batch_sharding),
                      out_shardings=rep)
    return train_fn, eval_fn


# ------------------------------------------------------------------------- the run

def member(tree, i: int):
    """Member i's slice of a stacked pytree (states, metrics, eval sums)."""
    return jax.tree.map(lambda x: x[i], tree)


def evaluate(pop: PopulationSetup, eval_fn, states, teacher) -> list[dict]:
    """Each member's eval metrics (the task's `finalize`) on the eval split."""
    cfg, setup = pop.config, pop.setup
    sums = None
    for batch in data.make_eval_iterator(setup.info, split=cfg.data.eval_split,
                                         reader=cfg.data.reader,
                                         global_batch_size=cfg.eval_batch_size,
                                         sharding=setup.batch_sharding):
        out = jax.device_get(eval_fn(states, teacher, batch))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return [setup.task.finalize(member(sums, i)) for i in range(pop.size)]


def train_population(config, workdir: str) -> dict:
    """Trains (or resumes) the population of `config` in `workdir`; writes and returns the
    population summary (see the module doc)."""
    from jaxdistill import train
    pop = prepare_population(config)
    setup = pop.setup
    run_record.check(config, workdir)
    teacher = train.load_teachers(setup)  # a teacher (store) that does not fit: nothing written
    os.makedirs(workdir, exist_ok=True)
    dirs = [os.path.join(workdir, MEMBERS_DIR, str(i)) for i in range(pop.size)]
    writer = MetricWriter(workdir)
    writers = [MetricWriter(d) for d in dirs]
    ckpts = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints,
                                      best_metric=setup.task.best_metric,
                                      best_mode=setup.task.best_mode)
    watch = PreemptionWatch()
    try:
        train_fn, eval_fn = compile_steps(pop)
        restored = ckpts.restore_newest(pop.abstract_states, log=writer.print)
        if restored is None:
            states = jax.jit(pop.init_states, out_shardings=pop.state_shardings)()
            position = 0
        else:
            states, position = restored
            step = int(jax.device_get(states.step)[0])
            if step > config.num_steps:
                raise ValueError(f"config.num_steps ({config.num_steps}) is below the step of "
                                 f"the newest checkpoint in {workdir} ({step})")
            writer.print(f"resumed the population from step {step} in {workdir}")
        start = int(jax.device_get(states.step)[0])
        for w in (writer, *writers):
            w.drop_after(start)
        run_record.record(config, workdir)
        for member_cfg, d in zip(pop.members, dirs):
            run_record.record(member_cfg, d)
        batches = data.make_train_iterator(
            setup.info, split=config.data.train_split, reader=config.data.reader,
            global_batch_size=config.batch_size, seed=train.data_seed(config),
            sharding=setup.batch_sharding, position=position,
            extra_fields=setup.store.extra_fields if setup.store is not None else None)
        hparams = jax.device_put(pop.hparams, pop.hparams_sharding)
        states, evals, timed, elapsed = _loop(
            pop, lambda s, b: train_fn(s, hparams, teacher, b),
            lambda s: evaluate(pop, eval_fn, s, teacher), states, batches, ckpts, writer,
            writers, watch, workdir)
        if evals is None:
            evals = evaluate(pop, eval_fn, states, teacher)
    finally:
        ckpts.wait()
        ckpts.close()
        for w in (writer, *writers):
            w.close()
        watch.close()
    return _summary(pop, workdir, dirs, states, evals, timed, elapsed)


def _loop(pop: PopulationSetup, train_fn, evaluate_fn, states, batches, ckpts, writer, writers,
          watch, workdir):
    """Steps to `config.num_steps` with per-member logging, eval and one checkpoint of the
    population; returns (states, last evals, timed steps, training seconds)."""
    from jaxdistill.train import _mean_checked, stop_preempted
    config, task = pop.config, pop.setup.task
    items = task.items_per_step(config.batch_size, pop.setup.info)
    start = int(jax.device_get(states.step)[0])
    pending, timer_start, timed, evals = [], None, 0, None
    for step in range(start + 1, config.num_steps + 1):
        states, metrics = train_fn(states, next(batches))
        pending.append(metrics)
        if timer_start is None:  # compilation is not training time
            jax.block_until_ready(states.step)
            timer_start = time.perf_counter()
        else:
            timed += 1
        last, preempted = step == config.num_steps, watch.reached(step)
        save_now = last or preempted or (config.checkpoint_every
                                         and step % config.checkpoint_every == 0)
        eval_now = last or (config.eval_every and step % config.eval_every == 0)
        if save_now or eval_now or (config.log_every and step % config.log_every == 0):
            host = jax.device_get(pending)
            rate = timed * items / max(time.perf_counter() - timer_start, 1e-9)
            means = []
            for i, (w, schedule) in enumerate(zip(writers, _schedules(pop))):
                try:
                    scalars = _mean_checked([member(m, i) for m in host], step)
                except FloatingPointError as e:
                    raise FloatingPointError(f"{FIELD} member {i}: {e}") from None
                scalars["learning_rate"] = float(schedule(step - 1))
                w.write(step, "train", {**scalars, f"{task.unit}_per_second": rate})
                means.append(scalars)
            mean = {k: float(np.mean([m[k] for m in means])) for k in means[0]}
            eta = (config.num_steps - step) * items / max(rate, 1e-9)
            writer.print(f"population of {pop.size}, member mean: " + progress_line(
                step, config.num_steps, mean, rate, eta, task.unit))
            pending = []
        paused = time.perf_counter()
        if eval_now:
            evals = evaluate_fn(states)
            for i, (w, result) in enumerate(zip(writers, evals)):
                w.write(step, "eval", bias.scalars(result))
            best = task.best_metric
            writer.print(f"eval step {step}: {best} by member " + " ".join(
                f"{r[best]:.4f}" for r in evals))
        if save_now:
            ranking = ({task.best_metric: float(np.mean([r[task.best_metric] for r in evals]))}
                       if eval_now else None)
            ckpts.save(states, batches.position, metrics=ranking)
        timer_start += time.perf_counter() - paused
        if preempted:
            stop_preempted(writer, step, workdir)
    elapsed = time.perf_counter() - timer_start if timer_start is not None else 0.0
    return states, evals, timed, elapsed


def _schedules(pop: PopulationSetup):
    s = pop.pctx.schedules
    return s if len(s) == pop.size else s * pop.size


def _summary(pop: PopulationSetup, workdir: str, dirs, states, evals, timed: int,
             elapsed: float) -> dict:
    """Writes each member's summary.json (as a separate run's) and the population's."""
    from jaxdistill.train import _summary as run_summary
    summaries = []
    for i, (member_cfg, d) in enumerate(zip(pop.members, dirs)):
        setup = dataclasses.replace(pop.setup, config=member_cfg)
        s = run_summary(setup, d, member(states, i), evals[i], timed, elapsed)
        summaries.append({"member": i, "settings": overrides(pop.config)[i], **s})
    per = f"{pop.setup.task.unit}_per_second"
    summary = {"population_size": pop.size, "varying": varying(pop.config),
               per: summaries[0][per], f"member_{per}": summaries[0][per] * pop.size,
               "members": summaries}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def merge_summaries(summaries: dict[str, dict]) -> dict:
    """The experiment's summary of a population stage ('student'): each member's summary
    merged with the scratch baseline and the teacher run as a single run's
    (`experiment.merge_summaries`)."""
    from jaxdistill.experiment import merge_summaries as merge_run
    summary = dict(summaries["student"])
    summary["members"] = [bias.attach(merge_run({**summaries, "student": m}))
                          for m in summary["members"]]
    return summary


def table(summary: dict) -> str:
    """One line per member: its settings and the task's best metric."""
    rows = []
    for s in summary["members"]:
        metric = next(k for k in ("student_accuracy", "student_perplexity") if k in s)
        settings = ", ".join(f"{k}={v}" for k, v in sorted(s["settings"].items())) or "base"
        scratch = metric.replace("student_", "scratch_")
        gain = (f", {100 * (s[metric] - s[scratch]):+.2f} points over scratch"
                if scratch in s and metric == "student_accuracy" else "")
        rows.append(f"member {s['member']}: {metric} {s[metric]:.4f}{gain}  ({settings})")
    return "\n".join(rows)
