"""Orbax checkpoints: the run state, the frozen teacher, and a parameter fingerprint.

A run's checkpoints live in `<workdir>/checkpoints/<step>/` with three items:
`model` ({'params', 'batch_stats'} of the student: what a later run loads as its
teacher), `train` (aux params and state, optimizer state, step, rng) and `data` (the iterator
position, JSON), plus Orbax's `metrics` when the step was evaluated. Saving is asynchronous;
every process takes part (Orbax coordinates). Kept: the newest `keep` checkpoints plus the
best by the task's eval metric (highest accuracy; lowest perplexity for language models).

`<step>/sha256.json` records, per item, a SHA-256 over its files (`files_sha256`). Process 0
writes it in Orbax's background thread once every process's writes are done and before the
step directory is renamed into place, so a committed step carries its digests. Restoring
verifies them first: a damaged run checkpoint is set aside like an unreadable one, a damaged
teacher is refused. A step without sha256.json (written before digests were recorded) is
restored unverified, saying so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from jaxdistill.run_record import write_atomically
from jaxdistill.state import TrainState

CHECKPOINT_DIR = "checkpoints"
DIGESTS = "sha256.json"


def _handlers():
    return {"model": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler()}


def _abstract(tree):
    """ShapeDtypeStructs (with shardings) for a tree of arrays or abstract arrays."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


class RunCheckpoints:
    """Saves and restores a run's `TrainState` and data position in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, asynchronous: bool = True,
                 best_metric: str = "accuracy", best_mode: str = "max"):
        preserve = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                           reverse=best_mode == "min",
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=preserve,
                                               enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                             item_handlers=_handlers(), options=options)

    def save(self, state: TrainState, position: int, metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `state` at its step; `metrics` ranks it for 'best'."""
        step = int(jax.device_get(state.step))
        model = {"params": state.params["student"], "batch_stats": state.batch_stats}
        train = {"aux": state.params["aux"], "aux_state": state.aux_state,
                 "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        self.manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave({"position": int(position)})))

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, int]:
        """Restores the state at `step` straight into the shardings of `abstract_state`."""
        a = abstract_state
        model = {"params": a.params["student"], "batch_stats": a.batch_stats}
        train = {"aux": a.params["aux"], "aux_state": a.aux_state, "opt_state": a.opt_state,
                 "step": a.step, "rng": a.rng}
        r = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(model)),
            train=ocp.args.StandardRestore(_abstract(train)), data=ocp.args.JsonRestore()))
        state = TrainState(step=r["train"]["step"],
                           params={"student": r["model"]["params"], "aux": r["train"]["aux"]},
                           batch_stats=r["model"]["batch_stats"],
                           opt_state=r["train"]["opt_state"], rng=r["train"]["rng"],
                           aux_state=r["train"]["aux_state"])
        return state, int(r["data"]["position"])

    def restore_newest(self, abstract_state: TrainState, log=print
                       ) -> tuple[TrainState, int] | None:
        """Restores the newest readable checkpoint; a corrupted newer one is moved aside to
        `<workdir>/corrupted_checkpoints/` (kept for inspection, never overwritten) and the
        next older one is tried, saying so. None if there is no checkpoint at all."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = self.restore(step, abstract_state)
            except Exception as e:
                if i + 1 == len(steps):
                    raise ValueError(f"no readable checkpoint in {self.manager.directory}; the "
                                     f"oldest (step {step}) failed with: {e}") from e
                log(f"checkpoint at step {step} is unreadable ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); falling back to step {steps[i + 1]}")
                continue
            if i:
                self._set_aside(steps[:i])
            return restored
        return None

    def _set_aside(self, steps: list[int]) -> None:
        directory = os.fspath(self.manager.directory)
        aside = os.path.join(os.path.dirname(directory), "corrupted_checkpoints")
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                os.replace(os.path.join(directory, str(step)),
                           os.path.join(aside, f"{step}-{int(time.time())}"))
        multihost_utils.sync_global_devices("jaxdistill_set_aside_checkpoints")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def teacher_directory(path: str, field: str = "config.teacher.checkpoint") -> str:
    """The checkpoint directory for `config.teacher.checkpoint` (a run's workdir or its
    `checkpoints/` folder); raises ValueError if it holds no checkpoint."""
    path = os.path.abspath(os.path.expanduser(path))
    for candidate in (os.path.join(path, CHECKPOINT_DIR), path):
        if os.path.isdir(candidate) and any(n.isdigit() for n in os.listdir(candidate)):
            return candidate
    raise ValueError(f"{field}: no checkpoint found at '{path}'; point it at the "
                     "workdir of a finished teacher run (a run with no teacher trains one)")


def _shapes(tree) -> dict[str, tuple]:
    """{path: shape} with Flax's Variable `value` level dropped, for comparing trees."""
    return {_path_str(p).removesuffix("/value"): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _teacher_manager(path: str, field: str = "config.teacher.checkpoint"):
    directory = teacher_directory(path, field)
    manager = ocp.CheckpointManager(directory, item_handlers=_handlers(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    return directory, manager, manager.latest_step()


def check_teacher_fits(path: str, abstract_vars: dict,
                       field: str = "config.teacher.checkpoint") -> None:
    """Raises ValueError, naming the first mismatching parameter, unless the newest
    checkpoint under `path` holds a `model` item with exactly the shapes of
    `abstract_vars` ({'params', 'batch_stats'}). Reads metadata only."""
    directory, manager, step = _teacher_manager(path, field)
    stored = _shapes(manager.item_metadata(step)["model"].tree)
    manager.close()
    wanted = _shapes(abstract_vars)
    for name in sorted(set(wanted) | set(stored)):
        if wanted.get(name) != stored.get(name):
            raise ValueError(
                f"{field}: '{directory}' (step {step}) does not fit "
                f"the model: parameter '{name}' is {stored.get(name, 'missing')} in the "
                f"checkpoint but {wanted.get(name, 'absent')} in the model; check the teacher's model, "
                "kwargs and the dataset's class count")


def load_teacher(path: str, abstract_vars: dict) -> dict:
    """Restores the newest `model` item under `path` straight into the dtypes and
    shardings of `abstract_vars` (checked first with `check_teacher_fits`)."""
    check_teacher_fits(path, abstract_vars)
    _, manager, step = _teacher_manager(path)
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(abstract_vars))))["model"]
    manager.close()
    return restored


def params_sha256(params) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, leaves sorted by path: a
    fingerprint of the parameters that is independent of their sharding."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: _path_str(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        value = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{_path_str(path)}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
