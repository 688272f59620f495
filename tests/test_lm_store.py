"""The language model's offline token store: the sparse divergences against float64 NumPy and
online KD (k = V), their gradients against the dense float64 formula, the chunked step equal
to the naive one, a written store against the teacher's own forward pass, its bytes per
token, a run from the store that holds no teacher and follows the online KD run step for step
at k = V, and the refusals (another teacher, sequence length, terms, task, bad flags)."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config, set_fields
from flax import nnx
from refusals import refusal, store_of_another_teacher

from jaxdistill import checkpoint, data, losses, terms
from jaxdistill.data.source import tfds_builder
from jaxdistill.losses.sparse_kd import TeacherEntries, bucket_logits
from jaxdistill.run_setup import prepare_run
from jaxdistill.store.token_writer import top_k_per_position
from jaxdistill.store.tokens import FIELDS, TokenStore, TokenStoreLayout, open_store
from jaxdistill.store.writer import write_store
from jaxdistill.terms import Views
from jaxdistill.train import compile_steps, load_teachers, train_and_evaluate

V, L = 512, 32
DIVERGENCES = {"kd": {"temperature": 2.0}, "fkl": {"temperature": 1.5}, "rkl": {},
               "jsd": {"beta": 0.3}, "tvd": {}, "skl": {"alpha": 0.2}, "srkl": {"alpha": 0.3}}


def _set(config, **fields):
    config = copy.deepcopy(config)
    with config.unlocked():
        return set_fields(config, **fields)


def lm_config(**overrides):
    """configs/lm_kd.py:runlocal shrunk: lm_tiny from lm_tiny on 4 pydoc topics (223 train
    windows of 32 positions, V = 512), ce + kd chunked over 16 positions, 3 steps."""
    config = load_config("lm_kd", "runlocal")
    set_fields(config, **{"data.name": "pydoc_topics", "data.max_documents": 4,
                          "data.vocab_size": V, "data.seq_len": L, "student.model": "lm_tiny",
                          "teacher.model": "lm_tiny", "batch_size": 8, "eval_batch_size": 32,
                          "num_steps": 3, "baseline": False, "log_every": 1, "eval_every": 0,
                          "checkpoint_every": 0, "optimizer.warmup_steps": 0,
                          "lm.chunk_size": 16, "lm.sample_tokens": 8})
    return _set(config, **overrides)


# --------------------------------------------------------------------------- 1. numerics

def _random_logits(seed, shape, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_bucketed(student, teacher, k, temperature):
    """float64 NumPy: (student, teacher) bucketed distributions [..., k (+1)] of the module
    doc of `losses.sparse_kd`, the teacher's top k taken from its logits here."""
    v = teacher.shape[-1]
    log_p = _np_log_softmax(teacher)
    ids = np.argsort(-teacher, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(log_p, ids, -1)
    s = np.take_along_axis(np.exp(_np_log_softmax(student / temperature)), ids, -1)
    a = top / temperature
    if k < v:
        tail = 1.0 - np.exp(top).sum(-1)
        m = v - k
        a = np.concatenate([a, (np.log(m) + (np.log(tail) - np.log(m)) / temperature)[..., None]],
                           -1)
        s = np.concatenate([s, 1.0 - s.sum(-1, keepdims=True)], -1)
    q = np.exp(a - a.max(-1, keepdims=True))
    return s, q / q.sum(-1, keepdims=True)


def _np_kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), -1)


NP_DIVERGENCES = {  # of bucketed (student s, teacher q); T^2 for kd
    "kd": lambda s, q, h: h["temperature"] ** 2 * _np_kl(q, s),
    "fkl": lambda s, q, h: _np_kl(q, s),
    "rkl": lambda s, q, h: _np_kl(s, q),
    "jsd": lambda s, q, h: (h["beta"] * _np_kl(q, h["beta"] * q + (1 - h["beta"]) * s)
                            + (1 - h["beta"]) * _np_kl(s, h["beta"] * q + (1 - h["beta"]) * s)),
    "tvd": lambda s, q, h: 0.5 * np.abs(q - s).sum(-1),
    "skl": lambda s, q, h: _np_kl(q, h["alpha"] * q + (1 - h["alpha"]) * s),
    "srkl": lambda s, q, h: _np_kl(s, h["alpha"] * s + (1 - h["alpha"]) * q),
}


def _entries(teacher, k):
    log_p, ids, log_tail = top_k_per_position(jnp.asarray(teacher, jnp.float32), k)
    return TeacherEntries(log_p, ids, log_tail)


def _term(name, hparams, student, teacher=None, entries=None):
    views = Views(jnp.asarray(student, jnp.float32), {},
                  None if teacher is None else jnp.asarray(teacher, jnp.float32), {}, None,
                  teacher_entries=entries)
    return np.asarray(terms.TERMS[name].fn(views, **hparams))


def test_top_k_entries_and_the_exact_tail():
    teacher = _random_logits(0, (3, 5, 64))
    log_p, ids, log_tail = map(np.asarray, top_k_per_position(jnp.asarray(teacher, jnp.float32), 6))
    ref = _np_log_softmax(teacher)
    order = np.argsort(-teacher, -1)
    np.testing.assert_array_equal(ids, order[..., :6])
    np.testing.assert_allclose(log_p, np.take_along_axis(ref, order[..., :6], -1), atol=1e-5)
    rest = np.take_along_axis(np.exp(ref), order[..., 6:], -1).sum(-1)
    np.testing.assert_allclose(log_tail, np.log(rest), rtol=1e-5)
    _, _, none = top_k_per_position(jnp.asarray(teacher, jnp.float32), 64)
    assert np.all(np.isneginf(np.asarray(none)))  # k = V: no tail


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_sparse_divergence_at_full_k_equals_online(name):
    student, teacher = _random_logits(1, (2, 6, 64)), _random_logits(2, (2, 6, 64))
    sparse = _term(name, DIVERGENCES[name], student, entries=_entries(teacher, 64))
    online = _term(name, DIVERGENCES[name], student, teacher=teacher)
    np.testing.assert_allclose(sparse, online, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (5, 1.0), (5, 2.0), (40, 0.7)])
def test_sparse_divergences_match_float64_numpy(k, temperature):
    student, teacher = _random_logits(3, (2, 6, 64)), _random_logits(4, (2, 6, 64))
    entries = _entries(teacher, k)
    s, q = np_bucketed(student, teacher, k, temperature)
    for name, hparams in DIVERGENCES.items():
        hparams = {**hparams, "temperature": temperature}
        ours = _term(name, hparams, student, entries=entries)
        np.testing.assert_allclose(ours, NP_DIVERGENCES[name](s, q, hparams), rtol=2e-5,
                                   atol=2e-6, err_msg=name)
        if name in ("fkl", "rkl", "jsd", "kd") and temperature == 1.0:  # a lower bound
            assert np.all(ours <= _term(name, hparams, student, teacher=teacher) + 1e-5)


def test_gradients_equal_those_of_the_dense_float64_formula():
    """d(sparse KD)/d(student logits) in float32 against jax.grad of the dense float64
    formula, whose student tail is the log-sum-exp of the logits outside the stored ids."""
    student, teacher = _random_logits(5, (2, 4, 64)), _random_logits(6, (2, 4, 64))
    weights = np.arange(1.0, 9.0).reshape(2, 4)
    k, t = 7, 2.0
    entries = _entries(teacher, k)

    def sparse(z):
        return jnp.sum(weights * losses.kd_loss(*bucket_logits(z, entries, temperature=t),
                                                temperature=t))
    ours = np.asarray(jax.jit(jax.grad(sparse))(jnp.asarray(student, jnp.float32)))
    with jax.enable_x64(True):
        log_p = jnp.float64(_np_log_softmax(teacher))
        ids = jnp.asarray(np.argsort(-teacher, -1)[..., :k])
        stored = jnp.put_along_axis(jnp.zeros(teacher.shape, bool), ids, True, axis=-1,
                                    inplace=False)

        def dense(z):
            log_s = jax.nn.log_softmax(z / t, -1)
            s_tail = jax.nn.logsumexp(jnp.where(stored, -jnp.inf, log_s), -1)
            top = jnp.take_along_axis(log_p, ids, -1)
            tail = jnp.log1p(-jnp.exp(jax.nn.logsumexp(top, -1)))
            m = jnp.log(64.0 - k)
            a = jnp.concatenate([top / t, (m + (tail - m) / t)[..., None]], -1)
            q = jax.nn.softmax(a, -1)
            s = jnp.concatenate([jnp.take_along_axis(log_s, ids, -1), s_tail[..., None]], -1)
            return jnp.sum(weights * t ** 2 * jnp.sum(q * (jnp.log(q) - s), -1))
        value, reference = jax.jit(jax.value_and_grad(dense))(jnp.float64(student))
    np.testing.assert_allclose(float(jax.jit(sparse)(jnp.asarray(student, jnp.float32))),
                               float(value), rtol=1e-5)
    np.testing.assert_allclose(ours, np.asarray(reference), rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(reference)).max() > 1e-2  # a gradient that tests something


def test_chunked_sparse_step_equals_the_naive_one():
    """The objective over a layout's batch fields: chunked (head chunk by chunk, remat) and
    naive ([B, L, V] student logits) give the same values and gradients."""
    from jaxdistill.losses.chunked import Head, LogitChunks
    from jaxdistill.objective import build_objective
    rng = np.random.default_rng(7)
    h = jnp.asarray(rng.normal(size=(2, 8, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 64)), jnp.float32)
    entries = _entries(_random_logits(8, (2, 8, 64)), 5)
    labels = jnp.asarray(rng.integers(0, 64, (2, 8)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, (2, 8)), jnp.float32)
    objective = build_objective({"ce": {"weight": 0.5}, "kd": {"weight": 1.0, "temperature": 2.0},
                                 "jsd": {"weight": 0.3}}, has_teacher=True)

    def total(w, chunk):
        if chunk:
            chunks = LogitChunks(h, Head(lambda v, x: x @ v, w), None, None, None, labels,
                                 weights, chunk, entries)
            views = Views(None, {}, None, {}, labels, None, {}, weights, chunks)
        else:
            views = Views(h @ w, {}, None, {}, labels, None, {}, weights, teacher_entries=entries)
        value, values, _ = objective(views, jnp.int32(0))
        return value, values
    grad = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)
    (naive, n_values), g_naive = grad(w, 0)
    (chunked, c_values), g_chunked = grad(w, 4)
    np.testing.assert_allclose(chunked, naive, rtol=1e-5)
    for key in n_values:
        np.testing.assert_allclose(c_values[key], n_values[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(g_chunked, g_naive, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- 2. the store


def _save_random_teacher(workdir, seed):
    """A random lm_tiny teacher saved as a run saves one (host arrays shaped like the run's
    state: norm scales near 1, weights of scale fan_in ** -0.5; no init to compile)."""
    setup = prepare_run(lm_config(), teacher_checkpoint_required=False)
    rng = np.random.default_rng(seed)

    def value(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return np.zeros(x.shape, x.dtype)
        if len(x.shape) <= 1:
            return (1 + 0.1 * rng.normal(size=x.shape)).astype(x.dtype)
        return (rng.normal(size=x.shape) * x.shape[0] ** -0.5).astype(x.dtype)
    state = jax.tree.map(value, setup.abstract_state)
    ckpts = checkpoint.RunCheckpoints(workdir, keep=1, asynchronous=False)
    ckpts.save(state, position=0)
    ckpts.wait()
    ckpts.close()
    return workdir


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return _save_random_teacher(str(tmp_path_factory.mktemp("lm_store_teacher")), 1)


@pytest.fixture(scope="module")
def config(teacher_dir):
    return lm_config(**{"teacher.checkpoint": teacher_dir})


@pytest.fixture(scope="module")
def full_store(config, tmp_path_factory):
    """All V tokens in float32: the store that must reproduce online KD."""
    path = str(tmp_path_factory.mktemp("token_stores") / "full")
    write_store(config, path, log_prob_dtype="float32")
    return TokenStore(path)


@pytest.fixture(scope="module")
def top8_store(config, tmp_path_factory):
    """The top 8 in bfloat16 (the default)."""
    path = str(tmp_path_factory.mktemp("token_stores") / "top8")
    meta = write_store(config, path, top_k=8)
    assert meta["log_prob_dtype"] == "bfloat16"
    return TokenStore(path)


def _teacher_logits(config, windows):
    """The teacher's float32 logits on windows, from its own model (no store code)."""
    setup = prepare_run(config)
    teacher = load_teachers(setup)

    @jax.jit
    def logits(variables, w):
        model = nnx.merge(setup.ctx.teacher_def, variables["params"], variables["batch_stats"])
        return model(w["inputs"], train=False, segment_ids=w["segment_ids"],
                     positions=w["positions"])[0]
    return np.asarray(logits(teacher, windows), np.float64)


def test_stored_entries_are_the_teachers_top_k(config, full_store, top8_store):
    info = data.prepare_from_config(config.data)
    source = tfds_builder(info.tfds_name, info.data_dir).as_data_source("train")
    ids = [0, 100, 222]
    windows = {k: np.stack([source[i][k] for i in ids]) for k in ("inputs", "segment_ids",
                                                                    "positions")}
    log_p = _np_log_softmax(_teacher_logits(config, windows))
    order = np.argsort(-log_p, -1)
    full, top8 = full_store.lookup(ids), top8_store.lookup(ids)
    assert full[FIELDS["log_probs"]].dtype == np.float32
    assert top8[FIELDS["log_probs"]].dtype.name == "bfloat16"
    assert top8[FIELDS["ids"]].dtype == np.uint16
    # every token once, largest first, at its own log-probability (near-ties in either order)
    np.testing.assert_array_equal(np.sort(full[FIELDS["ids"]], -1),
                                  np.broadcast_to(np.arange(V), order.shape))
    np.testing.assert_allclose(full[FIELDS["log_probs"]],
                               np.take_along_axis(log_p, full[FIELDS["ids"]], -1), atol=2e-5)
    np.testing.assert_allclose(full[FIELDS["log_probs"]], np.take_along_axis(log_p, order, -1),
                               atol=2e-5)
    assert np.all(np.isneginf(full[FIELDS["log_tail"]]))
    top_ids = top8[FIELDS["ids"]].astype(np.int64)
    np.testing.assert_allclose(top8[FIELDS["log_probs"]].astype(np.float64),
                               np.take_along_axis(log_p, top_ids, -1), rtol=2 ** -8)
    np.testing.assert_allclose(np.take_along_axis(log_p, top_ids, -1),
                               np.take_along_axis(log_p, order[..., :8], -1), atol=2e-5)
    outside = np.ones(log_p.shape, bool)
    np.put_along_axis(outside, top_ids, False, -1)
    rest = np.where(outside, np.exp(log_p), 0.0).sum(-1)
    np.testing.assert_allclose(top8[FIELDS["log_tail"]], np.log(rest), atol=2e-6)  # f32 lse - lse
    assert full_store.fingerprint == top8_store.fingerprint  # same teacher, data, tokenizer
    # bytes per token: k (2 + 2) + 4 + 8 / L for bfloat16 + uint16, k (4 + 2) + ... for float32
    assert top8_store.meta["bytes_per_token"] == 8 * 4 + 4 + 8 / L
    assert full_store.meta["bytes_per_token"] == V * (4 + 2) + 4 + 8 / L
    pad = full_store.lookup([-1])
    assert np.all(pad[FIELDS["log_probs"]] == np.float32(-np.log(V)))


def _online_steps(config, steps):
    """The online KD run's first `steps` train metrics, stepped as the trainer steps them
    (its init, compiled step, teacher and train iterator; no eval, no checkpoints)."""
    setup = prepare_run(config)
    train_fn, _ = compile_steps(setup)
    teacher = load_teachers(setup)
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(
        jax.random.PRNGKey(config.seed))
    batches = data.make_train_iterator(setup.info, split="train", reader="grain",
                                       global_batch_size=config.batch_size, seed=config.seed,
                                       sharding=setup.batch_sharding)
    records = []
    for _ in range(steps):
        state, metrics = train_fn(state, teacher, next(batches))
        records.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return records


def test_a_run_from_the_store_holds_no_teacher_and_follows_online_kd(config, full_store,
                                                                     tmp_path):
    """The trainer from a full-k float32 store, 2 steps: the jitted step takes no teacher
    and its metrics are the online KD step's, step for step."""
    stored = _set(config, **{"teacher.store": full_store.path, "num_steps": 2})
    setup = prepare_run(stored)
    assert setup.teacher_input_abstract is None and setup.ctx.teacher_def is None
    assert setup.ctx.token_store and setup.ctx.chunk_size == 16
    summary = train_and_evaluate(stored, str(tmp_path / "store"))
    with open(tmp_path / "store" / "metrics.jsonl") as f:
        ours = [r for r in map(json.loads, f) if r["split"] == "train"]
    ref = _online_steps(config, 2)
    assert len(ours) == 2 and ref[0]["kd"] > 0 and ours[1]["loss"] != ours[0]["loss"]
    for key in ("loss", "ce", "kd", "accuracy", "agreement", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in ref], rtol=1e-5,
                                   atol=1e-7, err_msg=key)
    assert np.isfinite(summary["student_perplexity"])
    assert "teacher_perplexity" not in summary  # no teacher in memory to evaluate


def test_a_store_for_another_run_or_term_is_refused(config, full_store, tmp_path):
    stored = _set(config, **{"teacher.store": full_store.path})
    hint = _set(stored, **{"objective.hint": ml_collections.ConfigDict(
        {"weight": 1.0, "student_feature": "block0", "teacher_feature": "block0"})})
    cases = [
        (_set(stored, **{"data.seq_len": 64, "lm.chunk_size": 16}),
         (f"config.teacher.store='{full_store.path}' holds windows of 32 positions over 512 "
          "tokens, but the dataset has 64 over 512 (config.data.seq_len / vocab_size); write a "
          "store for this config with `python -m jaxdistill.teacher_store`")),
        (hint, ("config.objective.hint: loss 'hint' needs the teacher's features, which a token "
                "store (config.teacher.store) does not hold; use ['ce', 'fkl', 'jsd', 'kd', "
                "'rkl', 'skl', 'srkl', 'tvd'] or run the teacher online "
                "(config.teacher.store='')")),
        (_set(stored, **{"objective.kd.standardize": True}),
         ("config.objective.kd.standardize: standardising needs all of the teacher's logits, "
          "not a token store's top k; set it to False or run the teacher online "
          "(config.teacher.store='')")),
    ]
    for bad, message in cases:
        assert refusal(lambda b=bad: prepare_run(b)) == message
    other = _save_random_teacher(str(tmp_path / "other_teacher"), 2)
    with pytest.raises(ValueError) as e:
        load_teachers(prepare_run(_set(stored, **{"teacher.checkpoint": other})))
    assert store_of_another_teacher(full_store, other).fullmatch(str(e.value)), str(e.value)
    with pytest.raises(ValueError) as e:
        write_store(config, str(tmp_path / "never"), features=("hidden",))
    assert str(e.value) == (
        "--features=['hidden']: a token store holds the teacher's top-k log-probabilities "
        "only; drop --features")
    with pytest.raises(ValueError) as e:
        write_store(config, str(tmp_path / "never"), top_k=513)
    assert str(e.value) == "--top_k=513: must be in [0, 512] (0 = all tokens)"
    assert not os.path.exists(tmp_path / "never")
    with pytest.raises(ValueError) as e:
        open_store(str(tmp_path), "causal_lm")
    assert str(e.value) == (
        f"config.teacher.store='{tmp_path}' is not a teacher store (no store.json; an "
        "interrupted write leaves none); write one with `python -m jaxdistill.teacher_store "
        "--config=... --store=DIR`")
    with pytest.raises(ValueError) as e:
        open_store(full_store.path, "classification")
    assert str(e.value) == (
        f"config.teacher.store='{full_store.path}' is a language model's token store, which "
        "task 'classification' cannot use; write one for this config with `python -m "
        "jaxdistill.teacher_store`")
    assert TokenStoreLayout(64, 65536, 8).dtype["ids"].base == np.uint16
    assert TokenStoreLayout(64, 65537, 8).dtype["ids"].base == np.int32
