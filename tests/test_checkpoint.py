"""Run checkpoints: what is kept, what comes back, digests of damaged ones and teachers,
and the parameter fingerprint."""

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from refusals import refusal

from jaxdistill import checkpoint, parallel
from jaxdistill.metrics import progress_line
from jaxdistill.state import TrainState


def _state(step, value, sharding):
    put = lambda x: jax.device_put(x, sharding)
    return TrainState(step=put(jnp.int32(step)),
                      params={"student": {"w": put(jnp.full((8, 4), value))}, "aux": {}},
                      batch_stats={"mean": put(jnp.full((4,), -value))},
                      opt_state=(put(jnp.full((8, 4), 2 * value)),), rng=put(jnp.zeros(2, "uint32")),
                      aux_state={"bank": put(jnp.arange(16.0).reshape(8, 2) * value)})


def test_keeps_newest_and_best_and_restores_everything(tmp_path):
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    rep = NamedSharding(mesh, P())
    ckpts = checkpoint.RunCheckpoints(str(tmp_path), keep=2)
    accuracies = [0.1, 0.9, 0.2, 0.3, 0.4]
    for step, acc in enumerate(accuracies, 1):
        ckpts.save(_state(step, float(step), rep), position=10 * step, metrics={"accuracy": acc})
    ckpts.wait()
    assert sorted(ckpts.manager.all_steps()) == [2, 4, 5]  # best (0.9) + newest two
    sharded = NamedSharding(mesh, P("data"))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=(
        sharded if x.ndim and x.shape[0] == 8 else rep)), _state(0, 0.0, rep))
    state, position = ckpts.restore(2, abstract)
    ckpts.close()
    assert position == 20 and int(state.step) == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state),
                 jax.device_get(_state(2, 2.0, rep)))
    assert state.params["student"]["w"].sharding == sharded  # restored straight into layout


def test_sha256_is_sharding_independent_and_matches_hashlib():
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    tree = {"b": np.arange(8, dtype=np.float32), "a": np.ones((8, 2), np.float32)}
    replicated = jax.device_put(tree, NamedSharding(mesh, P()))
    sharded = jax.device_put(tree, NamedSharding(mesh, P("data")))
    digest = hashlib.sha256()
    for name in ("a", "b"):  # sorted by path
        digest.update(f"{name}|float32|{tree[name].shape}|".encode() + tree[name].tobytes())
    assert checkpoint.params_sha256(replicated) == digest.hexdigest()
    assert checkpoint.params_sha256(sharded) == digest.hexdigest()
    tree["b"][3] += 1e-6
    assert checkpoint.params_sha256(tree) != digest.hexdigest()


def test_progress_line():
    line = progress_line(250, 1000, {"kd": 0.25, "loss": 1.5, "ce": 0.5, "learning_rate": 0.1},
                         4210.4, 125.0)
    assert line == "step 250/1000 | loss 1.5 ce 0.5 kd 0.25 | lr 0.1 | 4,210 ex/s | ETA 2m05s"
    assert progress_line(1, 10, {"loss": 1.0}, 0.0, 0.0).endswith("0 ex/s | ETA -")


def _rep():
    return NamedSharding(parallel.make_mesh((-1, 1), ("data", "model")), P())


def _saved(directory, steps=(1, 2), asynchronous=True):
    """A RunCheckpoints in `directory` with `_state(step, step)` saved at each of `steps`."""
    ckpts = checkpoint.RunCheckpoints(str(directory), asynchronous=asynchronous)
    for step in steps:
        ckpts.save(_state(step, float(step), _rep()), position=10 * step)
    ckpts.wait()
    return ckpts


def _flip(path, count=4):
    """Flips `count` bytes in the middle of `path`; its size stays the same."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
        f.seek(0)
        f.write(data)


def _data_file(item_dir):
    """The largest of the files a restore reads an item's array bytes from (the `d/` of
    the OCDBT database that Orbax merges the processes' writes into)."""
    return max(glob.glob(os.path.join(item_dir, "d", "*")), key=os.path.getsize)


@pytest.mark.parametrize("asynchronous", [True, False])
def test_every_saved_item_has_a_digest_that_restore_verifies(tmp_path, asynchronous):
    ckpts = _saved(tmp_path, asynchronous=asynchronous)
    for step in (1, 2):
        step_dir = tmp_path / "checkpoints" / str(step)
        with open(step_dir / checkpoint.DIGESTS) as f:
            recorded = json.load(f)
        assert sorted(recorded) == ["data", "model", "train"]
        for item, digest in recorded.items():  # recorded before the commit, nothing changed since
            assert checkpoint.files_sha256(str(step_dir / item)) == digest
        assert checkpoint.verify_digests(str(step_dir))
    lines = []
    state, position = ckpts.restore_newest(_state(0, 0.0, _rep()), log=lines.append)
    ckpts.close()
    assert lines == [] and int(state.step) == 2 and position == 20


@pytest.mark.parametrize("item", ["model", "train"])  # parameters, optimizer state
def test_flipped_bytes_set_the_checkpoint_aside_and_restore_the_previous(tmp_path, item):
    ckpts = _saved(tmp_path)
    _flip(_data_file(tmp_path / "checkpoints" / "2" / item))
    lines = []
    state, position = ckpts.restore_newest(_state(0, 0.0, _rep()), log=lines.append)
    ckpts.close()
    assert lines == [(f"checkpoint at step 2 is unreadable (DamagedCheckpoint: the files of its "
                      f"'{item}' item differ from the SHA-256 recorded when it was saved); "
                      "falling back to step 1")]
    assert int(state.step) == 1 and position == 10
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state),
                 jax.device_get(_state(1, 1.0, _rep())))
    assert os.listdir(tmp_path / "corrupted_checkpoints")[0].startswith("2-")


def test_a_checkpoint_without_digests_restores_unverified_saying_so(tmp_path):
    ckpts = _saved(tmp_path, steps=(1,))
    os.remove(tmp_path / "checkpoints" / "1" / checkpoint.DIGESTS)  # as an older version wrote it
    lines = []
    state, _ = ckpts.restore_newest(_state(0, 0.0, _rep()), log=lines.append)
    ckpts.close()
    assert int(state.step) == 1
    assert lines == [("checkpoint at step 1 records no sha256.json (written before digests were "
                      "recorded); restoring it unverified")]


def _teacher_vars():
    abstract = _state(0, 0.0, _rep())
    return {"params": abstract.params["student"], "batch_stats": abstract.batch_stats}


@pytest.fixture(scope="module")
def intact_teacher(tmp_path_factory):
    """A teacher run's workdir: its checkpoints hold `_teacher_vars()`-shaped model items."""
    workdir = tmp_path_factory.mktemp("teacher")
    _saved(workdir).close()
    return workdir


# How a teacher checkpoint can be damaged -> what the one-line error says after
# "config.teacher.checkpoint: the teacher checkpoint '<dir>/checkpoints/2' ".
# keep_digests=False: as an older version wrote it (no sha256.json, nothing to compare with).
TEACHER_DAMAGE = [
    ("flipped", lambda d: _flip(_data_file(d)), True,
     "is damaged: the files of its 'model' item differ from the SHA-256 recorded when it was saved"),
    ("truncated", lambda d: os.truncate(_data_file(d), 10), True,
     "is damaged: the files of its 'model' item differ from the SHA-256 recorded when it was saved"),
    ("missing", shutil.rmtree, True, "is damaged: its 'model' item is missing"),
    ("truncated, no digests", lambda d: os.truncate(_data_file(d), 10), False,
     "is unreadable (<the reader's error>)"),
    ("missing, no digests", shutil.rmtree, False, "is damaged: has no 'model' item"),
    ("no metadata, no digests", lambda d: os.remove(os.path.join(d, "_METADATA")), False,
     "is damaged: has no readable metadata in its 'model' item"),
]


@pytest.mark.parametrize("damage, keep_digests, problem",
                         [c[1:] for c in TEACHER_DAMAGE], ids=[c[0] for c in TEACHER_DAMAGE])
def test_a_damaged_teacher_is_refused_in_one_line(intact_teacher, tmp_path, damage,
                                                  keep_digests, problem):
    teacher = tmp_path / "teacher"
    shutil.copytree(intact_teacher, teacher)
    step_dir = teacher / "checkpoints" / "2"
    if not keep_digests:
        os.remove(step_dir / checkpoint.DIGESTS)
    damage(str(step_dir / "model"))
    message = refusal(lambda: checkpoint.load_teacher(str(teacher), _teacher_vars()))
    expected = (f"config.teacher.checkpoint: the teacher checkpoint '{step_dir}' {problem}; "
                "retrain the teacher into a new workdir or point config.teacher.checkpoint at "
                "an intact copy")
    assert re.fullmatch(re.escape(expected).replace(re.escape("<the reader's error>"), ".+"),
                        message), message


def test_an_intact_teacher_loads_and_one_without_digests_loads_saying_so(intact_teacher, tmp_path,
                                                                         capsys):
    vars_ = _teacher_vars()
    loaded = jax.device_get(checkpoint.load_teacher(str(intact_teacher), vars_))
    np.testing.assert_array_equal(loaded["params"]["w"], np.full((8, 4), 2.0))
    old = tmp_path / "old"
    shutil.copytree(intact_teacher, old)
    os.remove(old / "checkpoints" / "2" / checkpoint.DIGESTS)
    checkpoint.load_teacher(str(old), vars_)
    checkpoint.check_teacher_fits(str(old), vars_)
    assert capsys.readouterr().out.splitlines() == [  # said once
        (f"config.teacher.checkpoint: '{old / 'checkpoints' / '2'}' records no sha256.json "
         "(written before digests were recorded); using it unverified")]


def test_orbax_stragglers_after_a_failed_restore_are_dropped_and_nothing_else(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    asyncio_logger = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_logger, "filters", [])
    checkpoint._quiet_orbax_stragglers.cache_clear()
    checkpoint._quiet_orbax_stragglers()
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert seen == [other]

    def record(message):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 0, message, None, None)
    assert not asyncio_logger.filter(record(
        "Task exception was never retrieved\nfuture: <Task coro=<async_deserialize() "
        "defined at .../orbax/checkpoint/_src/serialization/serialization.py:394>>"))
    assert asyncio_logger.filter(record("Task exception was never retrieved\nfuture: <mine>"))
    checkpoint._quiet_orbax_stragglers.cache_clear()
