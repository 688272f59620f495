"""The training loop: init or resume, step, evaluate, checkpoint, log, summarise."""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import numpy as np
from absl import logging

from jaxdistill import bias, checkpoint, data, parallel, run_record, store
from jaxdistill.hf import params as hf_params
from jaxdistill.metrics import MetricWriter, format_duration, progress_line
from jaxdistill.preemption import PreemptionWatch
from jaxdistill.run_setup import RunSetup, prepare_run, run_cost
from jaxdistill.seqkd import train_info
from jaxdistill.step import (
    eval_step,
    eval_sums,
    student_update,
    teacher_eval_logits,
    teacher_step,
    train_step,
)

SUMMARY = "summary.json"
PAIR_METRICS = ("agreement", "kl", "error_repeat",  # eval metrics of the student-teacher pair
                "bucket_error_repeat")


def compile_steps(setup: RunSetup):
    """The jitted train and eval steps with explicit shardings; the state is donated.
    Both are called as `fn(state, teacher, batch)`."""
    if setup.teacher_mesh is not setup.mesh:
        return _submesh_steps(setup)
    rep = parallel.replicated(setup.mesh)
    teacher_sh = (jax.tree.map(lambda x: x.sharding, setup.teacher_input_abstract)
                  if setup.teacher_input_abstract is not None else None)
    in_sh = (setup.state_shardings, teacher_sh, setup.batch_sharding)
    train_fn = jax.jit(functools.partial(train_step, setup.ctx), in_shardings=in_sh,
                       out_shardings=(setup.state_shardings, rep), donate_argnums=(0,))
    eval_fn = jax.jit(functools.partial(eval_step, setup.ctx), in_shardings=in_sh,
                      out_shardings=rep)
    return train_fn, eval_fn


def _submesh_steps(setup: RunSetup):
    """Train and eval steps with the teacher on its own devices: its program runs on the
    teacher mesh, its outputs move to the student's devices, and since dispatch is
    asynchronous the teacher's forward for the next batch overlaps the student's step."""
    t_mesh, ctx = setup.teacher_mesh, setup.ctx
    t_rep, t_batch = parallel.replicated(t_mesh), parallel.batch_sharding(t_mesh)
    t_vars = jax.tree.map(lambda x: x.sharding, setup.teacher_abstract)
    teacher_fn = jax.jit(functools.partial(teacher_step, ctx, full_logits=True),
                         in_shardings=(t_rep, t_rep, t_vars, t_batch), out_shardings=t_batch)
    student_fn = jax.jit(functools.partial(student_update, ctx),
                         in_shardings=(setup.state_shardings, setup.batch_sharding,
                                       setup.batch_sharding, setup.batch_sharding),
                         out_shardings=(setup.state_shardings, parallel.replicated(setup.mesh)),
                         donate_argnums=(0,))
    teacher_eval_fn = jax.jit(functools.partial(teacher_eval_logits, ctx),
                              in_shardings=(t_vars, t_batch), out_shardings=t_batch)
    eval_fn = jax.jit(functools.partial(eval_sums, ctx),
                      in_shardings=(setup.state_shardings, setup.batch_sharding,
                                    setup.batch_sharding),
                      out_shardings=parallel.replicated(setup.mesh))

    def train(state, teacher, batch):
        rng, step = jax.device_put((state.rng, state.step), t_rep)
        outputs = teacher_fn(rng, step, teacher, jax.device_put(batch, t_batch))
        inputs, teachers = jax.device_put(outputs, setup.batch_sharding)
        return student_fn(state, inputs, teachers, batch)

    def evaluate_batch(state, teacher, batch):
        logits = teacher_eval_fn(teacher, jax.device_put(batch, t_batch))
        return eval_fn(state, jax.device_put(logits, setup.batch_sharding), batch)
    train.jitted = (teacher_fn, student_fn)
    return train, evaluate_batch


def load_teachers(setup: RunSetup):
    """The primary teacher's variables (plus `others`: the extra teachers'), restored
    once straight into their shardings; None without a teacher, and None with an offline
    store, once the store's fingerprint has been checked against the teacher."""
    if setup.teacher_abstract is None:
        return None
    cfg, abstract = setup.config, setup.teacher_abstract
    primary = {k: abstract[k] for k in ("params", "batch_stats")}
    teacher = (hf_params.read_teacher(cfg.teacher.hf_checkpoint, primary)
               if cfg.teacher.hf_checkpoint else checkpoint.load_teacher(cfg.teacher.checkpoint,
                                                                         primary))
    if setup.store is not None:
        store.check_store(setup.store, cfg, store.teacher_sha256(teacher), info=setup.info)
        return None
    if "others" in abstract:
        teacher["others"] = {name: checkpoint.load_teacher(cfg.extra_teachers[name].checkpoint, a)
                             for name, a in abstract["others"].items()}
    return teacher


def evaluate(setup: RunSetup, eval_fn, state, teacher) -> dict[str, float]:
    """The task's eval metrics on the eval split (classification: student top-1 accuracy
    and, with a teacher, its accuracy and the agreement; causal LM: perplexities, ...)."""
    cfg = setup.config
    sums = None
    for batch in data.make_eval_iterator(setup.info, split=cfg.data.eval_split,
                                         reader=cfg.data.reader,
                                         global_batch_size=cfg.eval_batch_size,
                                         sharding=setup.batch_sharding):
        out = eval_fn(state, teacher, batch)
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return setup.task.finalize(jax.device_get(sums))


def evaluate_other_student(setup: RunSetup, workdir: str) -> dict[str, float]:
    """`evaluate` with the final student of another run in `workdir` (same architecture, e.g.
    the demo's scratch student) in place of this run's, against this run's teacher: how much
    that student agrees with the teacher, on the same eval split."""
    teacher = load_teachers(setup)
    _, eval_fn = compile_steps(setup)
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(
        jax.random.PRNGKey(setup.config.seed))
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    other = checkpoint.load_teacher(workdir, abstract, field=f"the run in {workdir}")
    state = state.replace(params={**state.params, "student": other["params"]},
                          batch_stats=other["batch_stats"])
    return evaluate(setup, eval_fn, state, teacher)


def data_seed(config) -> int:
    """The seed of the training data's order: config.data.seed, or config.seed when -1."""
    return config.data.seed if config.data.seed >= 0 else config.seed


def _mean_checked(pending: list, last_step: int) -> dict[str, float]:
    """Mean of the per-step metrics of steps `last_step - len(pending) + 1 .. last_step`;
    raises FloatingPointError naming the first step and loss terms that are not finite."""
    host = jax.device_get(pending)
    for offset, metrics in enumerate(host):
        bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
        if bad:
            step = last_step - len(host) + 1 + offset
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at step {step}; stopped before saving it, so the "
                "newest checkpoint is the last good state. Lower the learning rate or check the "
                "data and the loss weights")
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _init_or_restore(setup: RunSetup, ckpts, writer, workdir: str):
    """The newest readable checkpoint's state and data position, or a fresh state."""
    config = setup.config
    restored = ckpts.restore_newest(setup.abstract_state, log=writer.print)
    if restored is None:
        init = jax.jit(setup.init_state, out_shardings=setup.state_shardings)
        state = init(jax.random.PRNGKey(config.seed))
        return hf_params.start_student(state, config.student, setup.abstract_state), 0
    state, position = restored
    step = int(jax.device_get(state.step))
    if step > config.num_steps:
        raise ValueError(f"config.num_steps ({config.num_steps}) is below the step of the "
                         f"newest checkpoint in {workdir} ({step})")
    writer.print(f"resumed from step {step} in {workdir}")
    return state, position


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs (or resumes) one training run in `workdir` and returns its summary."""
    setup = prepare_run(config)
    run_record.check(config, workdir)  # a rerun must be the same run: before anything is written
    teacher = load_teachers(setup)  # and a teacher that does not fit (its store) too
    os.makedirs(workdir, exist_ok=True)
    writer = MetricWriter(workdir)
    ckpts = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints,
                                      best_metric=setup.task.best_metric,
                                      best_mode=setup.task.best_mode)
    watch = PreemptionWatch()
    try:
        train_fn, eval_fn = compile_steps(setup)
        state, position = _init_or_restore(setup, ckpts, writer, workdir)
        writer.drop_after(int(jax.device_get(state.step)))  # records the resumed steps redo
        run_record.record(config, workdir)
        batches = data.make_train_iterator(  # seq-KD: on the teacher's completions
            train_info(setup, teacher), split=config.data.train_split, reader=config.data.reader,
            global_batch_size=config.batch_size, seed=data_seed(config),
            sharding=setup.batch_sharding, position=position,
            extra_fields=setup.store.extra_fields if setup.store is not None else None)
        state, last_eval, timed_steps, elapsed = _loop(
            setup, train_fn, functools.partial(evaluate, setup, eval_fn), state, teacher,
            batches, ckpts, writer, watch, workdir)
        if last_eval is None:  # nothing left to train: report the restored state
            last_eval = evaluate(setup, eval_fn, state, teacher)
    finally:  # in-flight saves hold good states: let them land, even on an error
        ckpts.wait()
        ckpts.close()
        writer.close()
        watch.close()
    logging.info("run finished in %s", format_duration(elapsed))
    return _summary(setup, workdir, state, last_eval, timed_steps, elapsed)


def _loop(setup: RunSetup, train_fn, evaluate_fn, state, teacher, batches, ckpts, writer,
          watch, workdir):
    """Steps to `config.num_steps` with logging, eval and checkpoints; returns (state,
    last eval, timed steps, training seconds). Exits 0 after a preemption checkpoint."""
    config = setup.config
    items = setup.task.items_per_step(config.batch_size, setup.info)
    start = int(jax.device_get(state.step))
    pending, timer_start, timed_steps, last_eval = [], None, 0, None
    for step in range(start + 1, config.num_steps + 1):
        state, metrics = train_fn(state, teacher, next(batches))
        pending.append(metrics)
        if timer_start is None:  # exclude compilation from throughput
            jax.block_until_ready(state.step)
            timer_start = time.perf_counter()
        else:
            timed_steps += 1
        last = step == config.num_steps
        preempted = watch.reached(step)
        save_now = last or preempted or (config.checkpoint_every
                                         and step % config.checkpoint_every == 0)
        eval_now = last or (config.eval_every and step % config.eval_every == 0)
        if save_now or eval_now or (config.log_every and step % config.log_every == 0):
            scalars = _mean_checked(pending, step)
            scalars["learning_rate"] = float(setup.schedule(step - 1))
            rate = timed_steps * items / max(time.perf_counter() - timer_start, 1e-9)
            writer.write(step, "train", {**scalars, f"{setup.task.unit}_per_second": rate})
            eta = (config.num_steps - step) * items / max(rate, 1e-9)
            writer.print(progress_line(step, config.num_steps, scalars, rate, eta,
                                       setup.task.unit))
            pending = []
        paused = time.perf_counter()  # eval and checkpointing do not count as training time
        if eval_now:
            last_eval = evaluate_fn(state, teacher)
            shown = bias.scalars(last_eval)  # per-class lists go to summary.json only
            writer.write(step, "eval", shown)
            writer.print(f"eval step {step}: " + " ".join(f"{k} {v:.4f}"
                                                          for k, v in shown.items()))
        if save_now:
            ckpts.save(state, batches.position, metrics=shown if eval_now else None)
        timer_start += time.perf_counter() - paused
        if preempted:
            stop_preempted(writer, step, workdir)
    elapsed = time.perf_counter() - timer_start if timer_start is not None else 0.0
    return state, last_eval, timed_steps, elapsed


def stop_preempted(writer, step: int, workdir: str) -> None:
    """Exits 0 after a preemption checkpoint at `step`, saying how to resume."""
    writer.print(f"preempted: saved a checkpoint at step {step} in {workdir}; rerun the same "
                 "command to resume")
    raise SystemExit(0)


def _summary(setup: RunSetup, workdir: str, state, result: dict, timed_steps: int,
             elapsed: float) -> dict:
    """Writes and returns `<workdir>/summary.json`: the eval metrics (the student's as
    `student_<metric>`, the teacher's as `teacher_<metric>`, agreement and KL as they are),
    throughput in the task's unit, parameter counts, FLOPs per example or token, digest."""
    cfg, task = setup.config, setup.task
    path = os.path.join(workdir, SUMMARY)
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    per = f"{task.unit}_per_second"
    items = task.items_per_step(cfg.batch_size, setup.info)
    rate = (timed_steps * items / elapsed if timed_steps and elapsed > 0
            else previous.get(per, 0.0))
    student_vars = {"params": setup.abstract_state.params["student"],
                    "batch_stats": setup.abstract_state.batch_stats}
    params, flops = run_cost(setup, setup.ctx.student_def, student_vars)
    unit = task.unit.removesuffix("s")
    summary = {"task": task.name, "dataset": cfg.data.name, "student_model": cfg.student.model,
               **{(k if k.startswith("teacher_") or k in PAIR_METRICS else f"student_{k}"): v
                  for k, v in result.items()},
               "steps": int(jax.device_get(state.step)), per: rate, "student_params": params,
               f"student_flops_per_{unit}": flops,
               "student_params_sha256": checkpoint.params_sha256(state.params["student"])}
    if "teacher_accuracy" in result:
        t_params, t_flops = run_cost(setup, setup.ctx.teacher_def, setup.teacher_abstract)
        summary.update(teacher_model=cfg.teacher.model, teacher_params=t_params,
                       **{f"teacher_flops_per_{unit}": t_flops})
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
