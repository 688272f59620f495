"""The causal-LM path: its losses against float64 NumPy, the per-token weighted mean, chunked
logit terms equal to the naive form (also with a tensor-sharded vocabulary), 8 devices equal
to 1 (FSDP + tensor rules by logical name, a teacher sub-mesh), the summary's perplexity
recomputed from the saved student, hint / attention transfer, every bad input named before
anything compiles, and one trace of the train step."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT, device_env, load_config, set_fields
from flax import nnx
from jax_events import JaxEvents
from refusals import refusal

from jaxdistill import checkpoint, data, losses
from jaxdistill import train as train_module
from jaxdistill.losses.chunked import Head, LogitChunks
from jaxdistill.objective import build_objective
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import train_step
from jaxdistill.tasks import CausalLM
from jaxdistill.terms import Views
from jaxdistill.train import compile_steps, load_teachers, train_and_evaluate

V, L, B = 512, 32, 8  # vocabulary, window length, batch
DATA = {"data.name": "pydoc_topics", "data.max_documents": 48, "data.vocab_size": V,
        "data.seq_len": L}
# every per-position logit term of the LM task, each with a non-default hyper-parameter
LOGIT_TERMS = {"ce": {"weight": 0.3}, "kd": {"weight": 0.5, "temperature": 2.0},
               "fkl": {"weight": 0.2, "temperature": 1.5}, "rkl": {"weight": 0.2},
               "jsd": {"weight": 0.2, "beta": 0.3}, "tvd": {"weight": 0.2},
               "skl": {"weight": 0.2, "alpha": 0.2}, "srkl": {"weight": 0.2, "alpha": 0.3}}


def lm_config(objective=None, **overrides):
    """configs/lm_kd.py:runlocal shrunk to lm_tiny on a small pydoc_topics, every stage short;
    `objective` replaces the terms."""
    config = load_config("lm_kd", "runlocal")
    set_fields(config, **{**DATA, "student.model": "lm_tiny", "teacher.model": "lm_tiny",
                          "batch_size": B, "eval_batch_size": 32, "num_steps": 3,
                          "baseline": False, "log_every": 1, "eval_every": 0,
                          "checkpoint_every": 0, "optimizer.warmup_steps": 0,
                          "lm.chunk_size": 0})
    if objective is not None:
        with config.unlocked():
            config.objective = ml_collections.ConfigDict(objective)
    return set_fields(config, **overrides)


def quick(fn, *args):
    """`fn` compiled ahead of time for `args` at XLA's backend optimisation level 0 (the
    level conftest sets for every program of the suite)."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


# --------------------------------------------------------------------------- NumPy references

def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_kl(p, q):
    """sum p log(p / q) over the last axis, 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * (np.log(safe) - np.log(np.where(p > 0, q, 1.0))), 0.0), -1)


def np_skew_kl(s, t, alpha, temperature=1.0):
    p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
    return _np_kl(p_t, alpha * p_t + (1 - alpha) * p_s)


def np_skew_reverse_kl(s, t, alpha, temperature=1.0):
    p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
    return _np_kl(p_s, alpha * p_s + (1 - alpha) * p_t)


def np_attention_distribution(s, t):
    """MiniLM: KL(A_t || A_s) per query row, mean over heads; rows first averaged over heads
    when the head counts differ."""
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdims=True), t.mean(1, keepdims=True)
    return _np_kl(t, s).mean(1)


def _logits(seed, shape=(2, 5, 11), scale=3.0):
    return scale * np.random.default_rng(seed).normal(size=shape)


def _causal_rows(seed, heads, length=6, batch=2):
    """Attention probabilities [B, H, L, L] with a causal mask (exact zeros above the diagonal)."""
    scores = 2.0 * np.random.default_rng(seed).normal(size=(batch, heads, length, length))
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    return _softmax(scores)


# --------------------------------------------------------------------------- 1. losses

def test_skew_kl_at_alpha_zero_is_the_forward_and_reverse_kl():
    s, t = _logits(0), _logits(1)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    np.testing.assert_allclose(losses.skew_kl(f32(s), f32(t), alpha=0.0),
                               losses.forward_kl(f32(s), f32(t)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(losses.skew_reverse_kl(f32(s), f32(t), alpha=0.0),
                               losses.reverse_kl(f32(s), f32(t)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(losses.skew_kl(f32(s), f32(t), alpha=0.0),
                               _np_kl(_softmax(t), _softmax(s)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.skew_reverse_kl(f32(s), f32(t), alpha=0.0),
                               _np_kl(_softmax(s), _softmax(t)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha, temperature", [(0.3, 1.0), (0.3, 2.0), (0.9, 1.0)])
def test_skew_kl_values_match_numpy(alpha, temperature):
    s, t = _logits(2), _logits(3)
    got = losses.skew_kl(jnp.float32(s), jnp.float32(t), alpha=alpha, temperature=temperature)
    assert got.shape == s.shape[:-1]
    np.testing.assert_allclose(got, np_skew_kl(s, t, alpha, temperature), rtol=2e-5, atol=1e-6)
    got = losses.skew_reverse_kl(jnp.float32(s), jnp.float32(t), alpha=alpha,
                                 temperature=temperature)
    np.testing.assert_allclose(got, np_skew_reverse_kl(s, t, alpha, temperature), rtol=2e-5,
                               atol=1e-6)
    # the two are different divergences, and alpha > 0 bounds them by log(1 / alpha)
    assert np.abs(np_skew_kl(s, t, alpha) - np_skew_reverse_kl(s, t, alpha)).max() > 1e-2
    peaked = np.zeros((1, 11))
    peaked[0, 0] = 60.0
    worst = losses.skew_kl(jnp.float32(-peaked), jnp.float32(peaked), alpha=alpha)
    assert np.isfinite(worst).all() and float(worst[0]) <= -np.log(alpha) + 1e-5
    assert refusal(lambda: losses.skew_kl(jnp.float32(s), jnp.float32(t), alpha=1.0)) == (
        "alpha must be in [0.0, 1.0), got 1.0")


@pytest.mark.parametrize("student_heads, teacher_heads", [(4, 4), (4, 2), (2, 6)])
def test_attention_distribution_loss_matches_numpy(student_heads, teacher_heads):
    s, t = _causal_rows(4, student_heads), _causal_rows(5, teacher_heads)
    got = losses.attention_distribution_loss(jnp.float32(s), jnp.float32(t))
    assert got.shape == (2, 6)
    want = np_attention_distribution(s, t)
    assert want.min() >= 0 and want.max() > 0.05
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(losses.attention_distribution_loss(jnp.float32(t), jnp.float32(t)),
                               0.0, atol=1e-6)
    short = jnp.float32(t[:, :, :4])
    assert refusal(lambda: losses.attention_distribution_loss(jnp.float32(s), short)) == (
        "attention maps must be [B, H, L, L] with equal batch and lengths, got "
        f"student_attention.shape=(2, {student_heads}, 6, 6) and "
        f"teacher_attention.shape=(2, {teacher_heads}, 4, 6)")


def _causal_softmax(scores):
    length = scores.shape[-1]
    mask = jnp.tril(jnp.ones((length, length), bool))
    return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min), axis=-1)


def _check_grads(cases, directions=4, eps=1e-5):
    """Reverse-mode gradients of scalar functions against central differences along random
    directions, in float64, all in one compiled program; returns the gradients."""
    fns, xs = zip(*cases)
    rng = np.random.default_rng(0)
    us = [jnp.asarray(rng.normal(size=(directions, *x.shape)), x.dtype) for x in xs]

    def check(xs, us):
        out = []
        for fn, x, u in zip(fns, xs, us):
            g = jax.grad(fn)(x)
            fd = jax.vmap(lambda d, fn=fn, x=x: (fn(x + eps * d) - fn(x - eps * d)) / (2 * eps))(u)
            out.append((jnp.tensordot(u, g, axes=x.ndim), fd, g))
        return out

    grads = []
    for i, (analytic, numeric, g) in enumerate(quick(check, list(xs), us)(list(xs), us)):
        assert g.dtype == jnp.float64, i  # float64 in, float64 through
        assert np.abs(numeric).max() > 1e-3, i  # directions the function depends on
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9, err_msg=str(i))
        grads.append(g)
    return grads


def test_gradients_match_finite_differences_in_float64():
    with jax.enable_x64(True):
        s, t = jnp.float64(_logits(6)), jnp.float64(_logits(7))
        a_t = jnp.float64(_causal_rows(8, 2))
        scores = jnp.float64(2.0 * np.random.default_rng(9).normal(size=(2, 4, 6, 6)))

        def weighted(values):  # a scalar that weighs each position differently
            return jnp.sum(values * jnp.arange(1.0, 1 + values.size).reshape(values.shape))
        cases = [
            (lambda x: losses.skew_kl(x, t, alpha=0.3, temperature=1.5), s),
            (lambda x: losses.skew_reverse_kl(x, t, alpha=0.3), s),
            (lambda x: losses.skew_reverse_kl(s, x, alpha=0.2), t),  # the teacher side too
            (lambda x: losses.attention_distribution_loss(_causal_softmax(x),
                                                          _causal_softmax(x[:, ::-1] * 0.5)),
             scores),  # equal head counts, both sides depend on x
            (lambda x: losses.attention_distribution_loss(_causal_softmax(x), a_t), scores),
        ]
        grads = _check_grads([(lambda x, fn=fn: weighted(fn(x)), x) for fn, x in cases])
        # masked (zero-probability) keys get a zero, finite gradient, not NaN
        assert np.isfinite(grads[-1]).all()
        np.testing.assert_array_equal(np.triu(np.asarray(grads[-1]), 1), 0.0)


# --------------------------------------------------------------------------- 2. weighted mean

def _token_views(seed, weights, hidden=4, vocab=7):
    """Random decoder-like outputs: hidden states and output heads of both models, the logits
    they give, targets and the given per-position weights."""
    rng = np.random.default_rng(seed)
    b, length = weights.shape
    h_s, h_t = rng.normal(size=(2, b, length, hidden))
    w_s, w_t = rng.normal(size=(2, hidden, vocab)) * 1.5
    labels = rng.integers(0, vocab, size=(b, length))
    return [jnp.asarray(x, jnp.float32) for x in (h_s, h_t, w_s, w_t)] + [
        jnp.asarray(labels, jnp.int32), jnp.asarray(weights, jnp.float32)]


def _objective_value(objective, h_s, h_t, w_s, w_t, labels, weights, *, chunk=0):
    """(total, values) of `objective` on the naive views, or chunked over `chunk` positions."""
    def head(w, h):
        return h @ w
    t_logits = h_t @ w_t
    if chunk:
        chunks = LogitChunks(h_s, Head(head, w_s), h_t, Head(head, w_t), None, labels, weights,
                             chunk)
        views = Views(None, {}, None, {"hidden": h_t}, labels, None,
                      {"teacher": (None, {"hidden": h_t})}, weights, chunks)
    else:
        views = Views(h_s @ w_s, {}, t_logits, {}, labels, None, {"teacher": (t_logits, {})},
                      weights)
    total, values, _ = objective(views, jnp.int32(0))
    return total, values


WEIGHTS = np.array([[1, 1, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], np.float32)


@pytest.mark.parametrize("chunk", [0, 2, 3])
def test_weighted_mean_counts_real_positions_only(chunk):
    objective = build_objective({"fkl": {"weight": 0.7}, "ce": {"weight": 0.3}},
                                has_teacher=True, task=CausalLM(lm_config()))
    h_s, h_t, w_s, w_t, labels, weights = _token_views(0, WEIGHTS)
    args = (h_s, h_t, w_s, w_t, labels, weights)
    total, values = quick(functools.partial(_objective_value, objective, chunk=chunk), *args)(
        *args)
    s, t = np.asarray(h_s @ w_s, np.float64), np.asarray(h_t @ w_t, np.float64)
    real = WEIGHTS > 0
    fkl = _np_kl(_softmax(t), _softmax(s))[real].mean()
    ce = -np.log(np.take_along_axis(_softmax(s), np.asarray(labels)[..., None], -1)[..., 0])
    ce = ce[real].mean()
    accuracy = (s.argmax(-1) == np.asarray(labels))[real].mean()
    agreement = (s.argmax(-1) == t.argmax(-1))[real].mean()
    # the real positions' mean differs from the mean over all positions
    assert abs(_np_kl(_softmax(t), _softmax(s)).mean() - fkl) > 1e-3
    np.testing.assert_allclose(values["fkl"], fkl, rtol=1e-5)
    np.testing.assert_allclose(values["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(values["accuracy"], accuracy, rtol=1e-6)
    np.testing.assert_allclose(values["agreement"], agreement, rtol=1e-6)
    np.testing.assert_allclose(total, 0.7 * fkl + 0.3 * ce, rtol=1e-5)


@pytest.mark.parametrize("chunk", [0, 3])
def test_weight_zero_positions_change_neither_loss_nor_gradient(chunk):
    objective = build_objective(LOGIT_TERMS, has_teacher=True, task=CausalLM(lm_config()))
    h_s, h_t, w_s, w_t, labels, weights = _token_views(1, WEIGHTS)

    def loss_and_grads(h_s, h_t, w_s, labels):
        def loss(h_s, w_s):
            return _objective_value(objective, h_s, h_t, w_s, w_t, labels, weights, chunk=chunk)
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(h_s, w_s)

    loss_and_grads = quick(loss_and_grads, h_s, h_t, w_s, labels)
    (total, values), (g_h, g_w) = loss_and_grads(h_s, h_t, w_s, labels)
    assert float(total) > 0 and np.abs(g_w).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(g_h)[WEIGHTS == 0], 0.0)
    pad = jnp.asarray(WEIGHTS == 0)[..., None]
    rng = np.random.default_rng(2)
    h_s2 = jnp.where(pad, jnp.float32(50 * rng.normal(size=h_s.shape)), h_s)
    h_t2 = jnp.where(pad, jnp.float32(50 * rng.normal(size=h_t.shape)), h_t)
    labels2 = jnp.where(pad[..., 0], (labels + 3) % 7, labels)
    (total2, values2), (g_h2, g_w2) = loss_and_grads(h_s2, h_t2, w_s, labels2)
    np.testing.assert_array_equal(total2, total)
    for name in values:
        np.testing.assert_array_equal(values2[name], values[name], err_msg=name)
    np.testing.assert_array_equal(g_w2, g_w)
    np.testing.assert_array_equal(np.asarray(g_h2)[WEIGHTS > 0], np.asarray(g_h)[WEIGHTS > 0])


# --------------------------------------------------------------------------- shared runs

TEACHER_KWARGS = {"dim": 96, "heads": 6, "mlp_dim": 192}  # lm_tiny 96 wide, 6 query heads
# the distilled run's terms: chunkable logit terms, a per-token hint through a learned
# 64 -> 96 projection, MiniLM attention transfer between 4 and 6 heads
HINT_AT = {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 1.0},
           "hint": {"weight": 1.0, "student_feature": "block1", "teacher_feature": "block1"},
           "at": {"weight": 10.0, "student_feature": "attn1", "teacher_feature": "attn1"}}


def run_config(teacher_dir="", **overrides):
    """The distilled run: the 64-wide lm_tiny student from a 96-wide lm_tiny teacher with
    HINT_AT; 6 steps, eval and checkpoint every 2, the newest and the best kept."""
    config = lm_config(HINT_AT, **{"teacher.checkpoint": teacher_dir, "num_steps": 6,
                                   "eval_every": 2, "checkpoint_every": 2,
                                   "keep_checkpoints": 1, **overrides})
    with config.unlocked():
        config.teacher.kwargs = ml_collections.ConfigDict(TEACHER_KWARGS)
    return config


def _batches(setup, seed=0):
    return data.make_train_iterator(setup.info, split="train", reader="grain",
                                    global_batch_size=setup.config.batch_size, seed=seed,
                                    sharding=setup.batch_sharding)


def _host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run_steps(config, state_leaves, steps=3, teacher=None):
    """`steps` train steps of `config` as the trainer runs them (compile_steps, the train
    iterator, the checkpointed teacher unless `teacher` is given) from the initial state
    `state_leaves` (the host leaves of `init_state`'s result, so that its compile is
    shared). Returns (setup, train_fn, final state, per-step metrics)."""
    setup = prepare_run(config, teacher_checkpoint_required=teacher is None)
    train_fn, _ = compile_steps(setup)
    teacher = load_teachers(setup) if teacher is None else teacher
    state = jax.device_put(jax.tree.unflatten(jax.tree.structure(setup.abstract_state),
                                              state_leaves), setup.state_shardings)
    batches, metrics = _batches(setup, config.seed), []
    for _ in range(steps):
        state, m = train_fn(state, teacher, next(batches))
        metrics.append(m)
    return setup, train_fn, state, [_host(m) for m in metrics]


def _numpy_teacher(abstract, seed=3):
    """Random host variables shaped like `abstract` (no init program to compile): norm
    scales near 1, weights of scale fan_in ** -0.5."""
    rng = np.random.default_rng(seed)

    def value(x):
        if len(x.shape) == 1:
            return (1 + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
        return (rng.normal(size=x.shape) * x.shape[0] ** -0.5).astype(np.float32)
    return jax.tree.map(value, abstract)


@pytest.fixture(scope="module")
def lm_init():
    """The trainer's initial state for run_config() on the host (student, adapter, adamw),
    a second draw of it (key 1) whose student serves as a 64-wide random teacher, and
    random 96-wide teacher variables: one init program compiled for the whole module."""
    setup = prepare_run(run_config(), teacher_checkpoint_required=False)
    init = quick(setup.init_state, jax.random.PRNGKey(0))
    state = jax.device_get(init(jax.random.PRNGKey(0)))
    other = jax.device_get(init(jax.random.PRNGKey(1)))
    return {"state": state, "teacher64": {"params": other.params["student"],
                                          "batch_stats": other.batch_stats},
            "teacher96": _numpy_teacher(setup.teacher_abstract)}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, lm_init):
    """The 96-wide teacher's checkpoint, saved as a run saves one."""
    workdir = str(tmp_path_factory.mktemp("lm_teacher"))
    teacher = lm_init["teacher96"]
    ckpts = checkpoint.RunCheckpoints(workdir, keep=1, asynchronous=False)
    ckpts.save(lm_init["state"].replace(params={"student": teacher["params"], "aux": {}},
                                        batch_stats=teacher["batch_stats"]), position=0)
    ckpts.wait()
    ckpts.close()
    return workdir


def _flat(tree) -> dict[str, np.ndarray]:
    """{path: host array}, the Variables' own `value` level left out of the path."""
    return {jax.tree_util.keystr(p).replace(".value", "").replace("['value']", ""):
            np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(
                jax.device_get(tree))[0]}


def _by_name(tree) -> dict[str, object]:
    """{path: leaf} like `_flat`, the leaves left where they are (device arrays, shapes)."""
    return {jax.tree_util.keystr(p).replace(".value", "").replace("['value']", ""): x
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _spec(array) -> tuple:
    """An array's PartitionSpec as a tuple, one entry per dimension."""
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (len(array.shape) - len(spec))


def _assert_metrics_close(ours, reference, rtol=2e-5, atol=1e-6):
    assert len(ours) == len(reference)
    for key in sorted(reference[0]):
        np.testing.assert_allclose([m[key] for m in ours], [m[key] for m in reference],
                                   rtol=rtol, atol=atol, err_msg=key)


# --------------------------------------------------------------------------- 3. chunked == naive

def _sgd(config):
    """Plain SGD at learning rate 1: one step's parameter change is minus the gradient."""
    return set_fields(config, **{"optimizer.name": "sgd", "optimizer.momentum": 0.0,
                                 "optimizer.learning_rate": 1.0, "optimizer.schedule": "constant",
                                 "optimizer.weight_decay": 0.0, "optimizer.grad_clip": 0.0})


@pytest.fixture(scope="module")
def chunk_runs(lm_init):
    """One SGD step with every logit term from the same state, teacher and batch: naive and
    chunked (chunks of 16 of the 32 positions) on one device, and chunked on 8 devices with
    the vocabulary split over a 4-way tensor axis. The student has its own output head, the
    teacher's is tied to its embedding: both kinds of head run chunk by chunk."""
    def config(chunk, **mesh):
        return _sgd(lm_config(LOGIT_TERMS, **{"lm.chunk_size": chunk,
                                              "student.kwargs": {"tie_embeddings": False},
                                              **mesh}))
    setups = {c: prepare_run(config(c), teacher_checkpoint_required=False) for c in (0, 16)}
    device = jax.devices()[0]
    key = jax.device_put(jax.random.PRNGKey(0), device)
    state = quick(setups[0].init_state, key)(key)
    teacher = jax.device_put(lm_init["teacher64"], device)
    batch = dict(next(_batches(setups[0])))
    # weight 0 on a quarter of the positions (padding and document ends are rare in this data)
    keep = np.random.default_rng(0).random(batch["weights"].shape) > 0.25
    batch = jax.device_put({**batch, "weights": batch["weights"] * keep}, device)
    out = {"batch": batch, "before": _flat(state.params)}
    for chunk, setup in setups.items():
        step = functools.partial(train_step, setup.ctx)
        new, metrics = quick(step, state, teacher, batch)(state, teacher, batch)
        out[chunk] = (_flat(new.params), _host(metrics))
        out[f"jaxpr{chunk}"] = jax.make_jaxpr(step)(state, teacher, batch)
    sharded = prepare_run(config(16, **{"mesh.shape": (2, 4), "mesh.axes": ("data", "tensor"),
                                        "mesh.student_rule": "tensor",
                                        "mesh.teacher_rule": "tensor"}),
                          teacher_checkpoint_required=False)
    train_fn, _ = compile_steps(sharded)
    s_state = jax.device_put(jax.device_get(state), sharded.state_shardings)  # it is donated
    s_teacher = jax.device_put(lm_init["teacher64"], jax.tree.map(lambda x: x.sharding,
                                                                  sharded.teacher_abstract))
    out["specs"] = {"embedding": _spec(s_state.params["student"]["embedding"]),
                    "head": _spec(s_state.params["student"]["head"]),
                    "teacher": _spec(s_teacher["params"]["embedding"]),
                    "q": _spec(s_state.params["student"]["blocks"][0]["attn"]["q"])}
    new, metrics = train_fn(s_state, s_teacher, jax.device_put(batch, sharded.batch_sharding))
    out["tensor"] = (_flat(new.params), _host(metrics))
    return out


def _assert_same_step(ours, reference, before):
    """Equal term values and metrics, and equal gradients (the SGD step's parameter change)."""
    (params, metrics), (ref_params, ref_metrics) = ours, reference
    assert set(metrics) == set(ref_metrics)
    assert {"loss", "accuracy", "agreement", "grad_norm", *LOGIT_TERMS} <= set(metrics)
    for key in sorted(ref_metrics):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-5, atol=1e-7,
                                   err_msg=key)
    assert set(params) == set(ref_params) == set(before)
    for name, value in before.items():
        grad, ref_grad = value - params[name], value - ref_params[name]
        scale = np.abs(ref_grad).max()
        assert scale > 0, name
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=2e-5 * scale, err_msg=name)


def test_chunked_logit_terms_equal_the_naive_ones(chunk_runs):
    weights = np.asarray(chunk_runs["batch"]["weights"])
    assert 0.6 < weights.mean() < 0.9  # the batch has weight-0 positions
    assert all(chunk_runs[0][1][k] > 0 for k in LOGIT_TERMS)
    _assert_same_step(chunk_runs[16], chunk_runs[0], chunk_runs["before"])


def _big_logits(jaxpr, batch, length, vocab) -> list[tuple]:
    """Shapes of every value in `jaxpr` (and its sub-jaxprs: scan, checkpoint, pjit, ...)
    that holds a whole sequence of vocabulary-sized logits: last axis `vocab` and at least
    batch * length * vocab entries."""
    found = []

    def walk(jx):
        for eqn in jx.eqns:
            for var in eqn.outvars:
                shape = getattr(var.aval, "shape", ())
                if shape and shape[-1] == vocab and np.prod(shape) >= batch * length * vocab:
                    found.append(tuple(shape))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)
                    if hasattr(sub, "eqns"):
                        walk(sub)
    walk(jaxpr.jaxpr)
    return found


def test_chunked_step_never_holds_a_sequence_of_logits(chunk_runs):
    """The naive step forms [B, L, V] logits; the chunked one, forward and backward, only
    [B, 16, V] pieces (chunked.py's memory claim, read off the traced program)."""
    assert (B, L, V) in _big_logits(chunk_runs["jaxpr0"], B, L, V)
    assert _big_logits(chunk_runs["jaxpr16"], B, L, V) == []


def test_chunked_step_with_a_tensor_sharded_vocabulary_equals_one_device(chunk_runs):
    assert chunk_runs["specs"] == {"embedding": ("tensor", None), "head": (None, "tensor"),
                                   "teacher": ("tensor", None), "q": (None, "tensor", None)}
    _assert_same_step(chunk_runs["tensor"], chunk_runs[16], chunk_runs["before"])


# --------------------------------------------------------------------------- 4-6, 8. the trainer

MESH_3D = {"mesh.shape": (2, 2, 2), "mesh.axes": ("data", "fsdp", "tensor"),
           "mesh.student_rule": "fsdp_tensor", "mesh.teacher_rule": "tensor"}

ONE_DEVICE_SCRIPT = """
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join({root!r}, "tests"))
from test_lm import run_config, run_steps
import jax
assert len(jax.devices()) == 1, jax.devices()
with np.load({state!r}) as f:
    leaves = [f[f"arr_{{i}}"] for i in range(len(f.files))]
print("METRICS" + json.dumps(run_steps(run_config({teacher!r}), leaves, steps=6)[3]))
"""


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, lm_init, teacher_dir):
    """The distilled LM run through the trainer on 8 devices (mesh data x fsdp x tensor,
    fsdp_tensor student, tensor teacher, chunked logit terms), what the trainer compiled and
    how it keeps checkpoints; the same steps with the teacher on its own 4 devices; and the
    naive step on 1 device in a fresh process (started first, it runs alongside)."""
    tmp = tmp_path_factory.mktemp("lm_run")
    state_file = str(tmp / "init.npz")
    np.savez(state_file, *jax.tree.leaves(lm_init["state"]))
    env = device_env(1)
    proc = subprocess.Popen(
        [sys.executable, "-c", ONE_DEVICE_SCRIPT.format(root=ROOT, state=state_file,
                                                        teacher=teacher_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    compiled, kept_by = [], []

    class SpyCheckpoints(checkpoint.RunCheckpoints):
        def __init__(self, *args, **kwargs):
            kept_by.append(kwargs)
            super().__init__(*args, **kwargs)

    def spy_compile(setup, real=train_module.compile_steps):
        compiled.append(real(setup))
        return compiled[-1]
    workdir = str(tmp / "run")
    config = run_config(teacher_dir, **{**MESH_3D, "lm.chunk_size": 16})
    try:
        with pytest.MonkeyPatch.context() as patch, JaxEvents() as seen:
            patch.setattr(checkpoint, "RunCheckpoints", SpyCheckpoints)
            patch.setattr(train_module, "compile_steps", spy_compile)
            summary = train_and_evaluate(config, workdir)
            submesh = run_steps(run_config(teacher_dir, **{
                "lm.chunk_size": 16, "mesh.teacher_devices": 4,
                "mesh.student_rule": "fsdp_tensor", "mesh.teacher_rule": "fsdp"}),
                jax.tree.leaves(lm_init["state"]), steps=3)
        # compilations, not traces: prepare_run's abstract check traces train_step too
        traces = [seen.compiles[f"jit({f})"] for f in ("train_step", "eval_step",
                                                        "teacher_step", "student_update")]
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = next(x for x in stdout.splitlines() if x.startswith("METRICS"))
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == summary
    return {"workdir": workdir, "config": config, "summary": summary, "compiled": compiled,
            "traces": traces, "kept_by": kept_by, "submesh": submesh,
            "one_device": json.loads(line[len("METRICS"):])}


def test_eight_devices_equal_one_device(lm_run):
    """fsdp_tensor student, tensor teacher, chunked logit terms, hint and AT on 8 devices ==
    the naive step on 1 device, step by step."""
    reference = lm_run["one_device"]
    assert {"loss", "ce", "kd", "hint", "at", "accuracy", "agreement",
            "grad_norm"} == set(reference[0])
    ours = _records(lm_run["workdir"], "train")
    assert [r["step"] for r in ours] == [1, 2, 3, 4, 5, 6]
    _assert_metrics_close(ours, reference)
    assert len({r["loss"] for r in ours}) == 6 and np.isfinite([r["loss"] for r in ours]).all()


def test_teacher_submesh_equals_the_same_mesh_run(lm_run):
    setup, _, state, metrics = lm_run["submesh"]
    student, teacher = set(setup.mesh.devices.flat), set(setup.teacher_mesh.devices.flat)
    assert len(student) == len(teacher) == 4 and not student & teacher
    assert {d for x in jax.tree.leaves(state) for d in x.devices()} == student
    same_mesh = [{k: r[k] for k in metrics[0]} for r in _records(lm_run["workdir"], "train")]
    _assert_metrics_close(metrics, same_mesh[:3])
    _assert_metrics_close(metrics, lm_run["one_device"][:3])


def test_train_and_eval_steps_compile_once(lm_run):
    """The trainer's jitted train step (6 steps) and eval step (3 evaluations of 9 batches,
    the last one padded), and the sub-mesh run's teacher and student programs (3 steps):
    one compilation each."""
    assert len(lm_run["compiled"]) == 1  # compile_steps once per run
    assert lm_run["traces"] == [1, 1, 1, 1]
    assert len(_records(lm_run["workdir"], "eval")) == 3


def test_params_are_sharded_by_logical_name(lm_run, teacher_dir):
    """The student's parameters and optimizer moments (restored from the run's checkpoint),
    and the teacher's (restored as the run loads them), by logical axis name; then a
    config override of two names."""
    setup = prepare_run(lm_run["config"])
    state, _ = checkpoint.RunCheckpoints(lm_run["workdir"]).restore_newest(setup.abstract_state)
    student = _by_name(state.params["student"])
    want = {  # path (logical names): spec under fsdp_tensor
        "['embedding']": ("tensor", "fsdp"),                     # (vocab, embed)
        "['blocks'][0]['attn']['q']": ("fsdp", "tensor", None),  # (embed, heads, kv)
        "['blocks'][1]['attn']['k']": ("fsdp", "tensor", None),  # (embed, kv_heads, kv)
        "['blocks'][0]['attn']['o']": ("tensor", None, "fsdp"),  # (heads, kv, embed)
        "['blocks'][1]['mlp']['down']": ("tensor", "fsdp"),      # (mlp, embed)
        "['blocks'][0]['attn_norm']['scale']": (None,),          # (norm,)
    }
    assert {name: _spec(student[name]) for name in want} == want
    shards = {s.data.shape for s in student["['embedding']"].addressable_shards}
    assert shards == {(V // 2, 64 // 2)}
    moments = {k: _spec(x) for k, x in _by_name(state.opt_state).items()
               if k.endswith("['student']['embedding']")}
    assert len(moments) == 2 and set(moments.values()) == {("tensor", "fsdp")}  # mu and nu
    teacher = _by_name(load_teachers(setup)["params"])
    assert _spec(teacher["['embedding']"]) == ("tensor", None)
    assert _spec(teacher["['blocks'][0]['attn']['q']"]) == (None, "tensor", None)
    assert _spec(teacher["['blocks'][0]['mlp']['gate']"]) == (None, "tensor")
    # overrides: the width whole, the vocabulary over 'data' instead of the tensor axis
    setup = prepare_run(run_config(teacher_dir, **{
        "mesh.shape": (4, 2), "mesh.axes": ("data", "model"), "mesh.student_rule": "fsdp_tensor",
        "mesh.student_axis_rules": (("embed", None), ("vocab", "data"))}))
    abstract = _by_name(setup.abstract_state.params["student"])
    assert _spec(abstract["['embedding']"]) == ("data", None)
    assert _spec(abstract["['blocks'][0]['attn']['q']"]) == (None, "model", None)


def _decoder_size(dim, heads, mlp_dim, kv_heads=2, depth=2, vocab=V, length=L):
    """(parameters, matmul FLOPs per token, attention FLOPs per token) of a tied decoder."""
    head_dim = dim // heads
    block = 2 * dim + 2 * dim * heads * head_dim + 2 * dim * kv_heads * head_dim + 3 * dim * mlp_dim
    matmuls = 2 * (depth * (block - 2 * dim) + dim * vocab)
    return vocab * dim + depth * block + dim, matmuls, depth * 4 * length * heads * head_dim


def test_summary_of_an_lm_run(lm_run):
    s = lm_run["summary"]
    assert s["task"] == "causal_lm" and s["steps"] == 6
    for key in ("student_perplexity", "teacher_perplexity"):
        assert s[key] > 1.0, key
    for key in ("student_accuracy", "teacher_accuracy", "agreement"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["kl"] > 0 and s["tokens_per_second"] > 0
    for role, size in (("student", (64, 4, 128)), ("teacher", (96, 6, 192))):
        params, matmuls, attention = _decoder_size(*size)
        assert s[f"{role}_params"] == params, role
        flops = s[f"{role}_flops_per_token"]
        assert matmuls + attention <= flops <= 1.1 * (matmuls + attention), (role, flops)
    assert not {"examples_per_second", "student_flops_per_example"} & set(s)


def _np_rms(x, scale, eps=1e-5):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def _np_rope(x, positions, theta=10_000.0):
    """Rotate-half rotary embedding: feature i pairs with i + H/2."""
    half = x.shape[-1] // 2
    angle = positions[:, :, None, None] * theta ** (-np.arange(half) / half)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                           x2 * np.cos(angle) + x1 * np.sin(angle)], axis=-1)


def _mm(x, w):
    """x [..., d] times w [d, ...] as one 2-D matmul (NumPy's stacked matmul is far slower)."""
    out = x.reshape(-1, x.shape[-1]) @ w.reshape(w.shape[0], -1)
    return out.reshape(*x.shape[:-1], *w.shape[1:])


def np_decoder(p, tokens, segment_ids, positions, heads, kv_heads=2):
    """float64 NumPy forward of the tied-embedding Llama-style decoder (packing mask, GQA):
    logits and the features block<i> and attn<i>."""
    x = p["embedding"][tokens]
    length = tokens.shape[1]
    allowed = np.tril(np.ones((length, length), bool))[None] & (
        segment_ids[:, :, None] == segment_ids[:, None, :])
    features = {}
    for i in sorted(p["blocks"]):
        blk, a = p["blocks"][i], p["blocks"][i]["attn"]
        h = _np_rms(x, blk["attn_norm"]["scale"])
        q, k = (_np_rope(_mm(h, a[w]), positions) for w in ("q", "k"))
        k, v = (np.repeat(z, heads // kv_heads, axis=2) for z in (k, _mm(h, a["v"])))
        scores = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
        probs = _softmax(np.where(allowed[:, None], scores, -np.inf))
        context = np.einsum("bnqk,bknh->bqnh", probs, v)
        x = x + _mm(context.reshape(*context.shape[:2], -1), a["o"].reshape(-1, x.shape[-1]))
        h = _np_rms(x, blk["mlp_norm"]["scale"])
        m = blk["mlp"]
        gate = _mm(h, m["gate"])
        x = x + _mm(gate / (1 + np.exp(-gate)) * _mm(h, m["up"]), m["down"])
        features[f"block{int(i) + 1}"], features[f"attn{int(i) + 1}"] = x, probs
    return _mm(_np_rms(x, p["norm"]["scale"]), p["embedding"].T), features


def _pure(variables):
    return jax.tree.map(lambda x: np.asarray(x, np.float64),
                        nnx.to_pure_dict(jax.device_get(variables["params"])))


def _log_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_perplexity_is_exp_token_nll_recomputed_with_numpy(lm_run, teacher_dir):
    """summary.json's student/teacher perplexity, NLL, accuracy, agreement and KL from the
    saved student and teacher: a float64 NumPy forward pass over the whole eval split."""
    s = lm_run["summary"]
    setup = prepare_run(lm_run["config"])
    student_abstract = {"params": setup.abstract_state.params["student"],
                        "batch_stats": setup.abstract_state.batch_stats}
    models = {"student": (_pure(checkpoint.load_teacher(lm_run["workdir"], student_abstract)), 4),
              "teacher": (_pure(checkpoint.load_teacher(teacher_dir, setup.teacher_abstract)), 6)}
    fields = ("inputs", "targets", "segment_ids", "positions", "weights", "mask")
    batches = [{k: np.asarray(b[k]) for k in fields} for b in data.make_eval_iterator(
        setup.info, split="test", reader="grain", global_batch_size=32,
        sharding=setup.batch_sharding)]
    b = {k: np.concatenate([x[k] for x in batches]) for k in fields}
    w = b["weights"] * b["mask"][:, None]
    assert b["mask"].sum() == setup.info.splits["test"] < len(b["mask"])  # a padded batch
    log_p = {name: _log_softmax(np_decoder(params, b["inputs"], b["segment_ids"],
                                           b["positions"], heads)[0])
             for name, (params, heads) in models.items()}
    count = float(w.sum())

    def mean(values):
        return float((values * w).sum() / count)
    for name in ("student", "teacher"):
        nll = mean(-np.take_along_axis(log_p[name], b["targets"][..., None], -1)[..., 0])
        assert s[f"{name}_nll"] == pytest.approx(nll, rel=1e-5)
        assert s[f"{name}_perplexity"] == pytest.approx(np.exp(nll), rel=1e-5)
        correct = mean(log_p[name].argmax(-1) == b["targets"])
        assert s[f"{name}_accuracy"] == pytest.approx(correct, abs=2 / count)
    agree = mean(log_p["student"].argmax(-1) == log_p["teacher"].argmax(-1))
    assert s["agreement"] == pytest.approx(agree, abs=2 / count)
    p_t = np.exp(log_p["teacher"])
    kl = mean(np.sum(p_t * (log_p["teacher"] - log_p["student"]), -1))
    assert s["kl"] == pytest.approx(kl, rel=1e-4)


def test_the_best_checkpoint_is_the_lowest_perplexity(lm_run, lm_init, tmp_path):
    assert lm_run["kept_by"][0]["best_metric"] == "perplexity"
    assert lm_run["kept_by"][0]["best_mode"] == "min"
    evals = {r["step"]: r["perplexity"] for r in _records(lm_run["workdir"], "eval")}
    assert sorted(evals) == [2, 4, 6]
    kept = {int(n) for n in os.listdir(os.path.join(lm_run["workdir"], "checkpoints"))
            if n.isdigit()}
    assert kept == {6, min(evals, key=evals.get)}
    # the ranking itself, on metrics where the best perplexity is not the best accuracy
    ckpts = checkpoint.RunCheckpoints(str(tmp_path), keep=1, asynchronous=False,
                                      best_metric=CausalLM.best_metric,
                                      best_mode=CausalLM.best_mode)
    for step, (ppl, acc) in enumerate([(9.0, 0.9), (3.0, 0.1), (5.0, 0.2), (7.0, 0.3)], 1):
        ckpts.save(lm_init["state"].replace(step=np.int32(step)), 0,
                   metrics={"perplexity": ppl, "accuracy": acc})
    ckpts.wait()
    assert sorted(ckpts.manager.all_steps()) == [2, 4]
    ckpts.close()


def test_hint_and_attention_transfer_on_the_lm(lm_run, lm_init, teacher_dir):
    """The run's first-step hint (block1 of the 64-wide student through the learned 64 -> 96
    projection onto the teacher's block1, per token) and at (MiniLM on attn1, 4 student heads
    against 6 teacher heads, per query token) equal NumPy references from the initial
    parameters; the projection trains (it is in the checkpoint, changed)."""
    setup = prepare_run(lm_run["config"])
    assert setup.ctx.attention_maps and setup.ctx.chunk_size == 16
    batch = {k: np.asarray(v) for k, v in next(_batches(setup)).items()}  # step 1's batch
    init = lm_init["state"]
    adapter = _flat(init.params["aux"]["hint"])
    kernel, bias = adapter["['proj']['kernel']"], adapter["['proj']['bias']"]
    assert kernel.shape == (64, 96) and bias.shape == (96,)
    args = (batch["inputs"], batch["segment_ids"], batch["positions"])
    _, s = np_decoder(_pure({"params": init.params["student"]}), *args, heads=4)
    _, t = np_decoder(_pure(lm_init["teacher96"]), *args, heads=6)
    assert s["attn1"].shape == (B, 4, L, L) and t["attn1"].shape == (B, 6, L, L)
    hint = np.mean((_mm(s["block1"], kernel) + bias - t["block1"]) ** 2, axis=-1)
    at = np_attention_distribution(s["attn1"], t["attn1"])
    w = batch["weights"]
    first = _records(lm_run["workdir"], "train")[0]
    assert first["hint"] == pytest.approx((hint * w).sum() / w.sum(), rel=1e-4)
    assert first["at"] == pytest.approx((at * w).sum() / w.sum(), rel=1e-4)
    assert first["at"] > 1e-3 and first["hint"] > 1e-3
    state, _ = checkpoint.RunCheckpoints(lm_run["workdir"]).restore_newest(setup.abstract_state)
    trained = _flat(state.params["aux"]["hint"])["['proj']['kernel']"]
    assert np.abs(trained - kernel).max() > 1e-4


# --------------------------------------------------------------------------- 7. bad input

class _Compiles:
    """Counts XLA backend compilations while active (from empty caches)."""

    def __enter__(self):
        self.count = 0
        jax.clear_caches()  # what an earlier test compiled would compile again here
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


DIGITS = data.DatasetInfo(name="digits", data_dir="", num_classes=10, image_shape=(8, 8, 1),
                          splits={"train": 1437, "test": 360})
SAMPLE_ROOM = L - len(b"def ")  # lm.sample_tokens that fit after lm.sample_prompt
# (task, config overrides, objective (None: the config's), the message: it names the field)
BAD_INPUTS = [
    ("lm", {"task": "translation"}, None,
     ("config.task: unknown task 'translation'; choose one of ['causal_lm', 'classification',"
      " 'cross_tokenizer', 'sentence_embedding']")),
    ("lm", {}, {"ce": {}, "sp": {"student_feature": "block1", "teacher_feature": "block1"}},
     ("config.objective.sp: loss 'sp' does not support task 'causal_lm'; it supports ['at', "
      "'ce', 'fkl', 'hint', 'jsd', 'kd', 'rkl', 'skl', 'srkl', 'tvd']")),
    ("lm", {}, {"ce": {}, "dkd": {}},
     ("config.objective.dkd: loss 'dkd' does not support task 'causal_lm'; it supports ['at',"
      " 'ce', 'fkl', 'hint', 'jsd', 'kd', 'rkl', 'skl', 'srkl', 'tvd']")),
    ("lm", {}, {"ce": {}, "crd": {"student_feature": "hidden", "teacher_feature": "hidden"}},
     ("config.objective.crd: loss 'crd' does not support task 'causal_lm'; it supports ['at',"
      " 'ce', 'fkl', 'hint', 'jsd', 'kd', 'rkl', 'skl', 'srkl', 'tvd']")),
    ("lm", {"teacher.num_classes": 256}, None,
     ("config.teacher.num_classes: a vocabulary of 256 differs from the 512 tokens of "
      "config.data.vocab_size; teacher and student share the dataset's tokenizer: set it to 0"
      " (a teacher with its own: task 'cross_tokenizer')")),
    ("lm", {"student.num_classes": 1024}, None,
     ("config.student.num_classes: a vocabulary of 1024 differs from the 512 tokens of "
      "config.data.vocab_size; teacher and student share the dataset's tokenizer: set it to 0"
      " (a teacher with its own: task 'cross_tokenizer')")),
    ("lm", {"student.model": "mlp_student"}, None,
     ("config.student.model: 'mlp_student' is an image model, but task 'causal_lm' trains "
      "decoder models: decoder, gpt2, lm_20m, lm_base, lm_small, lm_student, lm_teacher, lm_tiny")),
    ("lm", {"teacher.model": "resnet20"}, None,
     ("config.teacher.model: 'resnet20' is an image model, but task 'causal_lm' trains "
      "decoder models: decoder, gpt2, lm_20m, lm_base, lm_small, lm_student, lm_teacher, lm_tiny")),
    ("lm", {"lm.chunk_size": 12}, None,
     ("config.lm.chunk_size (12) must be 0 (no chunking) or divide the sequence length 32; "
      "e.g. 8")),
    ("lm", {"lm.chunk_size": -16}, None,
     ("config.lm.chunk_size (-16) must be 0 (no chunking) or divide the sequence length 32; "
      "e.g. 32")),
    ("lm", {"lm.sample_tokens": SAMPLE_ROOM + 1}, None,
     ("config.lm.sample_tokens (29) must be in [0, 28]: the prompt and the sample must fit in"
      " config.data.seq_len (32)")),
    ("lm", {"data.name": "digits"}, None,
     ("config.data.name: 'digits' is an image dataset; task 'causal_lm' needs a token dataset"
      " (pystdlib, pydoc_topics, ...)")),
    ("lm", {"data.augment": "jitter"}, None,
     ("config.data.augment: 'jitter' augments images; task 'causal_lm' reads tokens, so set "
      "it to 'none'")),
    ("lm", {"mesh.student_axis_rules": (("vocab",),)}, None,
     ("config.mesh.student_axis_rules: ('vocab',) is not a (logical name, mesh axis) pair, "
      "e.g. ('vocab', 'tensor') or ('embed', None)")),
    ("lm", {"mesh.student_axis_rules": (("vocab", "tensor"),)}, None,
     ("config.mesh.student_axis_rules: ('vocab', 'tensor') names a mesh axis that is not in "
      "config.mesh.axes ('data', 'model')")),
    ("lm", {"mesh.teacher_axis_rules": ((1, "model"),)}, None,
     ("config.mesh.teacher_axis_rules: (1, 'model') is not a (logical name, mesh axis) pair, "
      "e.g. ('vocab', 'tensor') or ('embed', None)")),
    ("lm", {"mesh.teacher_axis_rules": (("heads", "fsdp"),)}, None,
     ("config.mesh.teacher_axis_rules: ('heads', 'fsdp') names a mesh axis that is not in "
      "config.mesh.axes ('data', 'model')")),
    ("lm", {"mesh.student_rule": "zero3"}, None,
     ("config.mesh.student_rule: 'zero3' is unknown; choose one of ('replicated', 'fsdp', "
      "'tensor', 'fsdp_tensor')")),
    ("lm", {"mesh.teacher_rule": "zero3"}, None,
     ("config.mesh.teacher_rule: 'zero3' is unknown; choose one of ('replicated', 'fsdp', "
      "'tensor', 'fsdp_tensor')")),
    ("classification", {"student.model": "lm_tiny"}, None,
     ("config.student.model: 'lm_tiny' is a decoder model, but task 'classification' trains "
      "image models: cnn, mlp, mlp_student, mlp_teacher, resnet110, resnet20, resnet32, resnet32x4, resnet56, resnet8x4, vit_small, vit_tiny, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2")),
    ("classification", {"teacher.model": "lm_tiny"}, None,
     ("config.teacher.model: 'lm_tiny' is a decoder model, but task 'classification' trains "
      "image models: cnn, mlp, mlp_student, mlp_teacher, resnet110, resnet20, resnet32, resnet32x4, resnet56, resnet8x4, vit_small, vit_tiny, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2")),
    ("classification", {"lm.chunk_size": 16}, None,
     ("config.lm.chunk_size: chunking runs over a sequence; task 'classification' has none, "
      "so set it to 0")),
]


@pytest.mark.parametrize("task, overrides, objective, message", BAD_INPUTS,
                         ids=[f"{t}:{','.join(o) or next(iter(obj or {'-': 0}))}-{i}"
                              for i, (t, o, obj, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_value_error_naming_its_field_before_anything_compiles(
        task, overrides, objective, message):
    if task == "lm":
        config, info = lm_config(objective, **overrides), None
    else:  # the digits demo (its dataset stood in for: the check comes before any data)
        config, info = set_fields(load_config("digits_kd", "tiny"), **overrides), DIGITS
    with _Compiles() as compiles:  # from empty caches: refusal alone would miss a cached hit
        got = refusal(lambda: prepare_run(config, teacher_checkpoint_required=False, info=info))
    assert got == message and compiles.count == 0


def test_chunking_with_several_teachers_is_refused(teacher_dir):
    """A chunked step applies the primary teacher's head itself: extra teachers are refused."""
    config = run_config(teacher_dir, **{"lm.chunk_size": 16})
    with config.unlocked():
        config.extra_teachers.second = {"model": "lm_tiny", "kwargs": TEACHER_KWARGS,
                                        "checkpoint": teacher_dir}
    with _Compiles() as compiles:
        got = refusal(lambda: prepare_run(config))
    assert got == ("config.lm.chunk_size: a chunked step distils from one teacher run online or "
                   "from a token store; remove config.extra_teachers or set "
                   "config.lm.chunk_size=0") and compiles.count == 0
    with config.unlocked():
        config.lm.chunk_size = 0
    with _Compiles() as compiles:  # fine unchunked; and a valid config compiles nothing either
        assert prepare_run(config).ctx.extra_teacher_defs.keys() == {"second"}
    assert compiles.count == 0
