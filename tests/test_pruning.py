"""`jaxdistill.pruning`: the cubic schedule (Zhu & Gupta 2017) against hand-computed values,
global and per-layer magnitude masks and the N:M mask against NumPy, pruned weights exactly
zero (and their momentum) after steps, after a checkpoint and after a resume, and the
refusals of bad `config.student.pruning` fields, in one line, before anything is written.
(A 2:4 student trained, checkpointed and exported end to end: tests/test_edge.py.)"""

import jax
import numpy as np
import pytest
from refusals import refusal

import jaxdistill as jd
from jaxdistill import checkpoint, pruning
from jaxdistill.run_setup import prepare_run


def _spec(**kw):
    base = {"method": "magnitude", "sparsity": 0.8, "initial_sparsity": 0.0, "scope": "global",
            "start_step": 10, "end_step": 50, "frequency": 10, "n": 2, "m": 4,
            "params": ("kernel",)}
    return pruning.PruningSpec(**{**base, **kw})


def test_cubic_schedule_and_due_steps():
    s = _spec()
    # s_t = 0.8 + (0 - 0.8) (1 - (t - 10) / 40)^3: t=20 -> 0.8 - 0.8 * 0.421875 = 0.4625,
    # t=30 -> 0.8 - 0.8 * 0.125 = 0.7, t=40 -> 0.8 - 0.8 / 64 = 0.7875
    for t, want in ((0, 0.0), (10, 0.0), (20, 0.4625), (30, 0.7), (40, 0.7875), (50, 0.8),
                    (90, 0.8)):
        assert float(pruning.target_sparsity(s, t)) == pytest.approx(want, abs=1e-6), t
    s_i = _spec(initial_sparsity=0.5, sparsity=0.9)  # 0.9 - 0.4 * 0.125 at the midpoint
    assert float(pruning.target_sparsity(s_i, 30)) == pytest.approx(0.85, abs=1e-6)
    assert float(pruning.target_sparsity(_spec(end_step=10), 10)) == pytest.approx(0.8)
    assert [t for t in range(70) if pruning.due(s, t)] == [10, 20, 30, 40, 50]
    off_grid = _spec(start_step=0, end_step=25)  # the end step is always an update
    assert [t for t in range(40) if pruning.due(off_grid, t)] == [0, 10, 20, 25]


def _numpy_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """False at the round(sparsity * N) smallest scores, ties by position (float64)."""
    k = round(sparsity * scores.size)
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    return keep


def test_global_and_layer_magnitude_masks_match_numpy():
    rng = np.random.default_rng(0)
    weights = {"a/kernel": rng.normal(size=(16, 8)).astype(np.float32),
               "b/kernel": 10 * rng.normal(size=(3, 3, 4, 6)).astype(np.float32)}
    s = 0.75
    flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    keep = _numpy_keep(flat, s)
    glob = pruning.magnitude_masks(weights, s, "global")
    np.testing.assert_array_equal(np.asarray(glob["a/kernel"]), keep[:128].reshape(16, 8))
    np.testing.assert_array_equal(np.asarray(glob["b/kernel"]), keep[128:].reshape(3, 3, 4, 6))
    layer = pruning.magnitude_masks(weights, s, "layer")
    for k, w in weights.items():
        np.testing.assert_array_equal(np.asarray(layer[k]),
                                      _numpy_keep(np.abs(w).ravel(), s).reshape(w.shape))
        assert int((~np.asarray(layer[k])).sum()) == round(s * w.size)
    # one threshold: the layer of large weights keeps more than its share, the other less
    assert np.asarray(glob["b/kernel"]).mean() > 0.25 > np.asarray(glob["a/kernel"]).mean()


def test_two_four_mask_along_the_input_axis():
    rng = np.random.default_rng(1)
    for shape in ((8, 3), (3, 3, 8, 5)):  # dense [in, out], conv [kh, kw, in, out]
        w = rng.normal(size=shape).astype(np.float32)
        mask = np.asarray(pruning.nm_mask(w, 2, 4))
        groups = np.moveaxis(mask, -2, -1).reshape(*shape[:-2], shape[-1], shape[-2] // 4, 4)
        assert (groups.sum(-1) == 2).all()
        wg = np.moveaxis(np.abs(w), -2, -1).reshape(groups.shape)
        kept_min = np.where(groups, wg, np.inf).min(-1)
        dropped_max = np.where(groups, -np.inf, wg).max(-1)
        assert (kept_min > dropped_max).all()  # the 2 largest |w| of each group are kept


def _config(**pruning_fields):
    c = jd.base_config()
    c.data.name = "digits"
    c.student.model = "mlp"
    c.student.kwargs = {"widths": (32,)}
    c.batch_size, c.eval_batch_size = 64, 120
    c.log_every = 0
    c.student.pruning.update(pruning_fields)
    return c


def _assert_pruned_zero(state):
    masks = {k: np.asarray(m) for k, m in state.masks.items()}
    for k, w in pruning.select(state.params["student"], masks).items():
        assert (np.asarray(w)[~masks[k]] == 0).all(), k
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        key = jax.tree_util.keystr(path, simple=True, separator="/")
        for k, m in masks.items():
            if key.endswith(f"student/{k}") and leaf.shape == m.shape:
                assert (np.asarray(leaf)[~m] == 0).all(), key


def _restore(workdir, setup):
    ckpts = checkpoint.RunCheckpoints(str(workdir))
    try:
        return ckpts.restore_newest(setup.abstract_state)[0]
    finally:
        ckpts.close()


def test_magnitude_pruning_survives_checkpoint_and_resume(tmp_path):
    """Global magnitude pruning to 75% by step 2, trained to step 3, then resumed to step 6:
    the masks are checkpointed, the resumed run keeps them (nothing pruned revives), the
    pruned weights and their momentum are exactly zero, and exactly round(0.75 N) are."""
    fields = {"method": "magnitude", "sparsity": 0.75, "start_step": 0, "end_step": 2,
              "frequency": 1}
    c = _config(**fields)
    c.num_steps = c.checkpoint_every = c.eval_every = 3
    first = jd.train_and_evaluate(c, str(tmp_path))
    setup = prepare_run(c)  # num_steps aside, the resumed run's state has the same shapes
    at3 = _restore(tmp_path, setup)
    c6 = _config(**fields)
    c6.num_steps, c6.checkpoint_every, c6.eval_every = 6, 3, 3
    last = jd.train_and_evaluate(c6, str(tmp_path))
    at6 = _restore(tmp_path, setup)
    assert int(at3.step) == 3 and int(at6.step) == 6
    assert first["student_params_sha256"] != last["student_params_sha256"]  # it trained on
    for state in (at3, at6):
        _assert_pruned_zero(state)
        kernels = pruning.select(state.params["student"], state.masks)
        total = sum(w.size for w in kernels.values())
        zeros = sum(int((np.asarray(w) == 0).sum()) for w in kernels.values())
        assert zeros == round(0.75 * total)
    for k in at3.masks:
        np.testing.assert_array_equal(np.asarray(at3.masks[k]), np.asarray(at6.masks[k]))
    assert last["student_params_sha256"] == checkpoint.params_sha256(at6.params["student"])


BAD_PRUNING = [
    ({"method": "magnitude", "sparsity": 1.0},
     ("config.student.pruning.sparsity must be in [0, 1) (the fraction of prunable weights set "
      "to zero), got 1.0")),
    ({"method": "magnitude", "sparsity": -0.1}, ("config.student.pruning.sparsity must be in "
                                                 "[0, 1) (the fraction of prunable weights set "
                                                 "to zero), got -0.1")),
    ({"method": "magnitude", "scope": "row"}, ("config.student.pruning.scope 'row' is unknown; "
                                               "choose one of ('global', 'layer')")),
    ({"method": "prune"}, ("config.student.pruning.method 'prune' is unknown; choose one of "
                           "('none', 'magnitude', 'nm')")),
    ({"method": "magnitude", "sparsity": 0.5, "end_step": 9},
     ("config.student.pruning.end_step (9) must be below config.num_steps (5): the final "
      "sparsity is reached at end_step")),
    ({"method": "nm", "m": 3}, ("config.student.pruning.m=3 does not divide the input axis of "
                                "'fc/kernel/value' (shape (32, 10): 32 inputs); choose an m "
                                "that divides every pruned layer or leave it out of "
                                "config.student.pruning.params")),
    ({"method": "nm", "params": ("scale",)}, ("config.student.pruning.params ('scale',): the "
                                              "student has no parameter of those names with 2 "
                                              "or more axes to prune")),
]


@pytest.mark.parametrize("fields, message", BAD_PRUNING)
def test_bad_pruning_fields_are_refused_before_anything_is_written(tmp_path, fields, message):
    c = _config(**fields)
    c.num_steps = 5
    workdir = tmp_path / "run"
    assert refusal(lambda: jd.train_and_evaluate(c, str(workdir)), workdir) == message
