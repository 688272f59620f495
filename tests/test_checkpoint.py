"""Run checkpoints: what is kept, what comes back, and the parameter fingerprint."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
