"""Orbax checkpoints: the run state, the frozen teacher, and a parameter fingerprint.

A run's checkpoints live in `<workdir>/checkpoints/<step>/` with three items:
`model` ({'params', 'batch_stats'} of the student: what a later run loads as its
teacher), `train` (aux params and state, optimizer state, step, rng, pruning masks) and
`data` (the iterator position, JSON). Saving is asynchronous; every process takes part
(Orbax coordinates). Kept: the newest `keep` checkpoints plus the best by the task's eval
metric (highest accuracy; lowest perplexity for language models).

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


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


@functools.cache
def _say_once(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


class DamagedCheckpoint(ValueError):
    """A checkpoint item whose files differ from the SHA-256 recorded when it was saved."""


def files_sha256(directory: str) -> str:
    """SHA-256 over the relative path and the SHA-256 of every file under `directory`, in
    path order (a missing directory hashes like an empty one)."""
    digest = hashlib.sha256()
    paths = sorted(os.path.relpath(os.path.join(root, name), directory)
                   for root, _, names in os.walk(directory) for name in names)
    for rel in paths:
        with open(os.path.join(directory, rel), "rb") as f:
            digest.update(rel.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def record_digests(step_dir: str) -> None:
    """Writes `<step_dir>/sha256.json`: {item: `files_sha256` of its directory}."""
    items = {name: files_sha256(os.path.join(step_dir, name)) for name in sorted(os.listdir(step_dir))
             if os.path.isdir(os.path.join(step_dir, name))}
    write_atomically(os.path.join(step_dir, DIGESTS), json.dumps(items, indent=1) + "\n")


def _item_matches(step_dir: str, name: str, recorded: dict) -> bool:
    try:
        return files_sha256(os.path.join(step_dir, name)) == recorded.get(name)
    except OSError:  # an unreadable file: damaged, and the other processes must hear so
        return False


def verify_digests(step_dir: str, items=None) -> bool:
    """Checks `items` (default: every recorded item) of a checkpoint against its
    sha256.json: raises DamagedCheckpoint naming the first that differs or is missing,
    returns False if the checkpoint records no digests, True if all match. Process 0 reads
    the files; every process gets its verdict."""
    path = os.path.join(step_dir, DIGESTS)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            recorded = json.load(f)
    except ValueError as e:
        raise DamagedCheckpoint(f"its {DIGESTS} is unreadable ({_first_line(e)})") from e
    names = sorted(recorded) if items is None else list(items)
    bad = -1
    if jax.process_index() == 0:
        bad = next((i for i, name in enumerate(names)
                    if not _item_matches(step_dir, name, recorded)), -1)
    bad = int(multihost_utils.broadcast_one_to_all(np.int32(bad)))
    if bad < 0:
        return True
    name = names[bad]
    if not os.path.isdir(os.path.join(step_dir, name)):
        raise DamagedCheckpoint(f"its '{name}' item is missing")
    raise DamagedCheckpoint(f"the files of its '{name}' item differ from the SHA-256 recorded "
                            "when it was saved")


@functools.cache
def _quiet_orbax_stragglers() -> None:
    """Installed before the first Orbax restore: when one fails, Orbax raises the first
    read's error and closes its event loop, and the other reads end unobserved (asyncio's
    'Task exception was never retrieved') or finish later on TensorStore threads and report
    to the closed loop (`RuntimeError: Event loop is closed`, through sys.unraisablehook):
    tracebacks about the failure already reported. Drops exactly those two."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda r: not (r.getMessage().startswith("Task exception was never retrieved")
                       and "orbax" in r.getMessage()))


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
        self._asynchronous = asynchronous
        self._saving = None  # the step of the save in flight
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve, enable_async_checkpointing=asynchronous,
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._record_digests)
                           if asynchronous else None))
        self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                             item_handlers=_handlers(), options=options)

    def _step_dir(self, step: int) -> str:
        return os.path.join(os.fspath(self.manager.directory), str(step))

    def _record_digests(self) -> None:
        """Orbax's post-finalization callback (process 0, every process's writes done): the
        digests go into the step's temporary directory, which Orbax then renames into place,
        or into the step directory itself where Orbax commits without a rename."""
        final = self._step_dir(self._saving)
        temporary = final + ocp.path.atomicity.TMP_DIR_SUFFIX
        record_digests(temporary if os.path.isdir(temporary) else final)

    def save(self, state: TrainState, position: int, metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `state` at its step (a population's states: their
        common step); `metrics` ranks it for 'best'."""
        step = int(np.max(jax.device_get(state.step)))
        model = {"params": state.params["student"], "batch_stats": state.batch_stats}
        train = {"aux": state.params["aux"], "aux_state": state.aux_state,
                 "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        if state.masks is not None:  # pruning (jaxdistill.pruning)
            train["masks"] = state.masks
        self.manager.wait_until_finished()  # Orbax waits anyway; the previous digests land first
        self._saving = step
        self.manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave({"position": int(position)})))
        if not self._asynchronous and jax.process_index() == 0:
            self._record_digests()

    def restore(self, step: int, abstract_state: TrainState, log=print
                ) -> tuple[TrainState, int]:
        """Restores the state at `step` straight into the shardings of `abstract_state`,
        after checking its digests (DamagedCheckpoint if they differ)."""
        if not verify_digests(self._step_dir(step)):
            log(f"checkpoint at step {step} records no {DIGESTS} (written before digests were "
                "recorded); restoring it unverified")
        a = abstract_state
        model = {"params": a.params["student"], "batch_stats": a.batch_stats}
        train = {"aux": a.params["aux"], "aux_state": a.aux_state, "opt_state": a.opt_state,
                 "step": a.step, "rng": a.rng}
        if a.masks is not None:
            train["masks"] = a.masks
        _quiet_orbax_stragglers()
        r = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(model)),
            train=ocp.args.StandardRestore(_abstract(train)), data=ocp.args.JsonRestore()))
        state = TrainState(step=r["train"]["step"],
                           params={"student": r["model"]["params"], "aux": r["train"]["aux"]},
                           batch_stats=r["model"]["batch_stats"],
                           opt_state=r["train"]["opt_state"], rng=r["train"]["rng"],
                           aux_state=r["train"]["aux_state"], masks=r["train"].get("masks"))
        return state, int(r["data"]["position"])

    def restore_newest(self, abstract_state: TrainState, log=print
                       ) -> tuple[TrainState, int] | None:
        """Restores the newest readable checkpoint whose digests match; an unreadable or
        damaged newer one is moved aside to `<workdir>/corrupted_checkpoints/` (kept for
        inspection, never overwritten) and the next older one is tried, saying so in one
        line. None if there is no checkpoint at all."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = self.restore(step, abstract_state, log)
            except Exception as e:
                if i + 1 == len(steps):
                    raise ValueError(f"--workdir: no readable checkpoint in "
                                     f"{self.manager.directory}; the oldest (step {step}) failed "
                                     f"with {_first_line(e)}; move the checkpoints/ folder aside "
                                     "to train from scratch") from e
                log(f"checkpoint at step {step} is unreadable ({_first_line(e)}); falling back "
                    f"to step {steps[i + 1]}")
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
                os.replace(self._step_dir(step), os.path.join(aside, f"{step}-{int(time.time())}"))
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


def _teacher_manager(path: str, field: str):
    directory = teacher_directory(path, field)
    manager = ocp.CheckpointManager(directory, item_handlers=_handlers(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    return os.path.join(directory, str(step)), manager, step


def _unusable_teacher(field: str, step_dir: str, problem: str) -> ValueError:
    return ValueError(f"{field}: the teacher checkpoint '{step_dir}' {problem}; retrain the "
                      f"teacher into a new workdir or point {field} at an intact copy")


def check_teacher_fits(path: str, abstract_vars: dict,
                       field: str = "config.teacher.checkpoint") -> None:
    """Raises ValueError, in one line naming `field` and the checkpoint, unless the newest
    checkpoint under `path` holds an intact `model` item (its digest matches) with exactly
    the shapes of `abstract_vars` ({'params', 'batch_stats'}). Hashes the item's files;
    restores nothing."""
    step_dir, manager, step = _teacher_manager(path, field)
    try:
        if not verify_digests(step_dir, items=("model",)):
            _say_once(f"{field}: '{step_dir}' records no {DIGESTS} (written before digests were "
                      "recorded); using it unverified")
        metadata = manager.item_metadata(step)
        if "model" not in metadata:
            raise DamagedCheckpoint("has no 'model' item")
        if metadata["model"] is None:
            raise DamagedCheckpoint("has no readable metadata in its 'model' item")
        stored = _shapes(metadata["model"].tree)
    except DamagedCheckpoint as e:
        raise _unusable_teacher(field, step_dir, f"is damaged: {e}") from e
    except Exception as e:
        raise _unusable_teacher(field, step_dir, f"is unreadable ({_first_line(e)})") from e
    finally:
        manager.close()
    wanted = _shapes(abstract_vars)
    for name in sorted(set(wanted) | set(stored)):
        if wanted.get(name) != stored.get(name):
            raise ValueError(
                f"{field}: '{step_dir}' does not fit "
                f"the model: parameter '{name}' is {stored.get(name, 'missing')} in the "
                f"checkpoint but {wanted.get(name, 'absent')} in the model; check the teacher's model, "
                "kwargs and the dataset's class count")


def load_teacher(path: str, abstract_vars: dict, field: str = "config.teacher.checkpoint") -> dict:
    """Restores the newest `model` item under `path` straight into the dtypes and
    shardings of `abstract_vars` (checked first with `check_teacher_fits`)."""
    check_teacher_fits(path, abstract_vars, field)
    step_dir, manager, step = _teacher_manager(path, field)
    _quiet_orbax_stragglers()
    try:
        return manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(abstract_vars))))["model"]
    except Exception as e:
        raise _unusable_teacher(field, step_dir, f"is unreadable ({_first_line(e)})") from e
    finally:
        manager.close()


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
