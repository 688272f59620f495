"""On-policy (GKD) and sequence-level KD on the one-function-per-window rows: the row layout by
hand, greedy sampling against an argmax loop over the uncached forward, the sampled batch
reproducible and keyed by step, lambda = 1 blind to the dataset's completions (lambda = 0 is
not), a resumed run sampling what an uninterrupted one does, the seq-KD dataset written once
and reused, and bad settings refused before anything compiles."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, set_fields
from flax import nnx
from refusals import refusal

from jaxdistill import checkpoint, data, onpolicy, seqkd
from jaxdistill.data.prompt_rows import rows
from jaxdistill.run_setup import prepare_run
from jaxdistill.train import compile_steps, load_teachers, train_and_evaluate

V, L, B = 320, 32, 8
TINY = {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 64}


def op_config(teacher_dir="", **overrides):
    """configs/lm_onpolicy.py:runlocal shrunk: 32-wide one-block decoders, 100 functions
    in windows of 32, 4 steps of 8 rows, a checkpoint every 2."""
    config = load_config("lm_onpolicy", "runlocal")
    with config.unlocked():
        config.teacher.kwargs = dict(TINY)
        config.student.kwargs = dict(TINY)
    return set_fields(config, **{
        "data.vocab_size": V, "data.seq_len": L, "data.max_documents": 100, "batch_size": B,
        "eval_batch_size": 8, "num_steps": 4, "log_every": 1, "eval_every": 0,
        "checkpoint_every": 2, "optimizer.warmup_steps": 0, "lm.sample_tokens": 0,
        "lm.sample_prompt": "def ",
        "teacher.checkpoint": teacher_dir, "seqkd.batch_size": 48, **overrides})


@pytest.fixture(scope="module")
def setup():
    return prepare_run(op_config(), teacher_checkpoint_required=False)


@pytest.fixture(scope="module")
def init(setup):
    """The initial state on the host, and a second draw whose student is the teacher."""
    fn = jax.jit(setup.init_state)
    return jax.device_get(fn(jax.random.PRNGKey(0))), jax.device_get(fn(jax.random.PRNGKey(1)))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, init):
    state, other = init
    workdir = str(tmp_path_factory.mktemp("op_teacher"))
    ckpts = checkpoint.RunCheckpoints(workdir, keep=1, asynchronous=False)
    ckpts.save(state.replace(params={"student": other.params["student"], "aux": {}},
                             batch_stats=other.batch_stats), position=0)
    ckpts.wait()
    ckpts.close()
    return workdir


@pytest.fixture(scope="module")
def batch(setup):
    batches = data.make_train_iterator(setup.info, split="train", reader="grain",
                                       global_batch_size=B, seed=0,
                                       sharding=setup.batch_sharding)
    return jax.device_get(next(batches))


def test_rows_by_hand():
    out = rows([([5, 6, 7], [8, 9]), ([1, 2, 3, 4, 5, 6], [7])], seq_len=6, eot_id=0)
    np.testing.assert_array_equal(out["inputs"], [[5, 6, 7, 8, 9, 0], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(out["targets"], [[6, 7, 8, 9, 0, 0], [2, 3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 1, 0], [1] * 6])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0], list(range(6))])
    # the second prompt is cut to the budget of 3; the rest of it joins the completion
    np.testing.assert_array_equal(out["weights"], [[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(onpolicy.prompt_lengths(jnp.asarray(out["weights"])), [3, 3])


def test_greedy_rollout_is_the_argmax_loop_of_the_uncached_forward(setup, init, batch):
    state, _ = init
    model = nnx.merge(setup.ctx.student_def, state.params["student"], state.batch_stats)
    eos, pad = setup.info.metadata["eot_id"], setup.info.metadata["pad_id"]
    sample = onpolicy.rollout(setup.ctx.student_def, state.params["student"], batch,
                              jax.random.key(0), onpolicy.Sampling(greedy=True), eos_id=eos,
                              pad_id=pad)
    lengths = np.asarray(onpolicy.prompt_lengths(jnp.asarray(batch["weights"])))
    assert lengths.min() >= 1 and lengths.max() <= L // 2
    forward = jax.jit(lambda tokens: model(tokens)[0])
    tokens = np.where(np.arange(L) < lengths[:, None], batch["inputs"], pad)
    generated, done = np.zeros((B, L), bool), np.zeros(B, bool)
    for i in range(L - L // 2):  # every row continues to the window's end or its eos
        logits = np.asarray(forward(jnp.asarray(tokens)))
        at = lengths + i
        live = ~done & (at < L)
        for b in np.flatnonzero(live):
            tokens[b, at[b]] = np.argmax(logits[b, at[b] - 1])
            generated[b, at[b]] = True
            done[b] |= tokens[b, at[b]] == eos
    np.testing.assert_array_equal(sample.tokens, tokens)
    np.testing.assert_array_equal(sample.generated, generated)
    new = jax.device_get(onpolicy.completion_batch(batch, sample))
    real = generated | (np.arange(L) < lengths[:, None])
    np.testing.assert_array_equal(new["inputs"], tokens)
    np.testing.assert_array_equal(new["targets"][:, :-1], tokens[:, 1:])
    np.testing.assert_array_equal(new["weights"], np.pad(generated[:, 1:], ((0, 0), (0, 1))))
    np.testing.assert_array_equal(new["segment_ids"], real)
    np.testing.assert_array_equal(new["positions"], real * np.arange(L))
    np.testing.assert_array_equal(new["index"], batch["index"])


def test_sampled_batch_is_reproducible_and_keyed_by_step(setup, init, batch):
    state, _ = init
    meta = setup.info.metadata
    ops = {lam: onpolicy.OnPolicy(lam, onpolicy.Sampling(), meta["eot_id"], meta["pad_id"])
           for lam in (1.0, 0.5)}
    fns = {lam: jax.jit(lambda s, b, op=op: op.batch(setup.ctx.student_def, s, b))
           for lam, op in ops.items()}

    def at(lam, step):
        return jax.device_get(fns[lam](state.replace(step=jnp.int32(step)), batch))
    first, again = at(1.0, 0), at(1.0, 0)
    for k in first[0]:
        np.testing.assert_array_equal(first[0][k], again[0][k])
    assert not np.array_equal(first[0]["inputs"], at(1.0, 1)[0]["inputs"])
    assert not np.array_equal(first[0]["inputs"], batch["inputs"])
    flags = []
    for step in range(8):  # lambda = 0.5: the dataset's batch or the step's samples, by coin
        mixed, metrics = at(0.5, step)
        flags.append(float(metrics["onpolicy"]))
        want = at(1.0, step)[0] if flags[-1] else batch
        for k in want:
            np.testing.assert_array_equal(mixed[k], want[k])
    assert 0 < sum(flags) < len(flags)


def _completions_changed(batch):
    """`batch` with every token after each row's prompt replaced (its weights kept)."""
    lengths = np.asarray(onpolicy.prompt_lengths(jnp.asarray(batch["weights"])))
    after = np.arange(L) >= lengths[:, None]
    out = dict(batch)
    out["inputs"] = np.where(after, (batch["inputs"] + 7) % V, batch["inputs"])
    out["targets"] = np.where(after | (np.arange(L) == lengths[:, None] - 1),
                              (batch["targets"] + 7) % V, batch["targets"])
    return out


def _steps(train_fn, setup, teacher, state, batches):
    """(per-step metrics, final host state) of `train_fn` over `batches` from host `state`."""
    state, metrics = jax.device_put(state, setup.state_shardings), []
    for batch in batches:
        state, m = train_fn(state, teacher, jax.device_put(batch, setup.batch_sharding))
        metrics.append(jax.device_get(m))
    return metrics, jax.device_get(state)


@pytest.fixture(scope="module")
def lam1(teacher_dir):
    """(setup, jitted train step, teacher) of the lambda = 1 run."""
    s = prepare_run(op_config(teacher_dir, **{"onpolicy.lambda_": 1.0}))
    return s, compile_steps(s)[0], load_teachers(s)


def test_lambda_one_trains_on_student_samples_alone(init, batch, teacher_dir, lam1):
    state, changed = init[0], _completions_changed(batch)
    (m1,), s1 = _steps(lam1[1], *lam1[::2], state, [batch])
    (m2,), s2 = _steps(lam1[1], *lam1[::2], state, [changed])
    assert m1["onpolicy"] == 1.0 and m1 == m2
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
    off = prepare_run(op_config(teacher_dir, **{"onpolicy.lambda_": 0.0}))  # supervised KD
    (o1, o2), _ = _steps(compile_steps(off)[0], off, load_teachers(off), state,
                         [batch, changed])
    assert "onpolicy" not in o1 and o1["jsd"] != o2["jsd"]  # it reads the completions


def test_a_resumed_run_samples_as_an_uninterrupted_one(tmp_path, init, lam1):
    setup, train_fn, teacher = lam1
    batches = data.make_train_iterator(setup.info, split="train", reader="grain",
                                       global_batch_size=B, seed=0,
                                       sharding=setup.batch_sharding)
    host = [jax.device_get(next(batches)) for _ in range(4)]
    first, at2 = _steps(train_fn, setup, teacher, init[0], host[:2])
    rest, whole = _steps(train_fn, setup, teacher, at2, host[2:])
    ckpts = checkpoint.RunCheckpoints(str(tmp_path), asynchronous=False)
    ckpts.save(jax.device_put(at2, setup.state_shardings), position=2)
    restored, position = ckpts.restore_newest(setup.abstract_state)
    ckpts.close()
    resumed = data.make_train_iterator(setup.info, split="train", reader="grain",
                                       global_batch_size=B, seed=0,
                                       sharding=setup.batch_sharding, position=position)
    again, final = _steps(train_fn, setup, teacher, jax.device_get(restored),
                          [jax.device_get(next(resumed)) for _ in range(2)])
    assert [m["onpolicy"] for m in first + rest] == [1.0] * 4 and again == rest
    jax.tree.map(np.testing.assert_array_equal, final.params, whole.params)
    op = setup.ctx.onpolicy  # and the samples themselves, from the restored state
    fn = jax.jit(lambda s, b: op.batch(setup.ctx.student_def, s, b)[0])
    for a, b in zip(jax.tree.leaves(jax.device_get(fn(restored, host[2]))),
                    jax.tree.leaves(jax.device_get(fn(jax.device_put(
                        at2, setup.state_shardings), host[2])))):
        np.testing.assert_array_equal(a, b)


def test_seqkd_dataset_is_the_teachers_completions_written_once(tmp_path, teacher_dir,
                                                                 monkeypatch, batch):
    config = op_config(teacher_dir, **{"seqkd.enabled": True, "num_steps": 1})
    summary = train_and_evaluate(config, str(tmp_path / "seqkd"))
    assert summary["steps"] == 1
    setup = prepare_run(config)
    teacher = load_teachers(setup)

    def refuse(*args, **kwargs):
        raise AssertionError("generated again")
    monkeypatch.setattr(seqkd, "complete_split", refuse)  # a rerun must read it back
    info = seqkd.train_info(setup, teacher)
    assert info.name == seqkd.NAME and info.splits == setup.info.splits
    source = data.make_eval_iterator(setup.info, split="train", reader="grain",
                                     global_batch_size=48, sharding=setup.batch_sharding)
    stored = data.make_eval_iterator(info, split="train", reader="grain",
                                     global_batch_size=48, sharding=setup.batch_sharding)
    rows_in, rows_out = (jax.device_get(next(iter(it))) for it in (source, stored))
    meta = setup.info.metadata
    want = onpolicy.completion_batch(rows_in, onpolicy.rollout(
        setup.ctx.teacher_def, teacher["params"], rows_in, jax.random.fold_in(
            jax.random.key(0), 0), onpolicy.Sampling(greedy=True), eos_id=meta["eot_id"],
        pad_id=meta["pad_id"]))
    for k in ("inputs", "targets", "weights", "segment_ids", "positions"):
        np.testing.assert_array_equal(rows_out[k], jax.device_get(want[k]))
    other = copy.deepcopy(config)
    with other.unlocked():
        other.seqkd.greedy = False
    sampled = seqkd.fingerprint("t", setup.info, onpolicy.sampling_from_config(
        other.seqkd, "config.seqkd"), 0)
    assert sampled != info.builder_config != seqkd.fingerprint(
        "t", setup.info, onpolicy.Sampling(greedy=True), 0)


@pytest.mark.parametrize("fields, message", [
    ({"onpolicy.lambda_": 1.5}, "config.onpolicy.lambda_ must be a probability in [0, 1], got 1.5"),
    ({"onpolicy.top_p": 0.0}, "config.onpolicy.top_p must be in (0, 1] (1: off), got 0.0"),
    ({"data.name": "pystdlib_functions"},
     ("config.onpolicy.lambda_=1.0 samples completions of prompts: set config.data.name to one "
      "of ['pystdlib_function_rows'] (one prompt per row), not 'pystdlib_functions'")),
    ({"teacher.model": "", "objective": {"ce": {"weight": 1.0}}},
     ("config.onpolicy.lambda_=1.0: the teacher scores the student's samples, so it must run "
      "online (a config.teacher.model, no config.teacher.store)")),
    ({"seqkd.enabled": True, "data.name": "pydoc_topics", "onpolicy.lambda_": 0.0},
     ("config.seqkd.enabled completes the prompts of a rows dataset: set "
      "config.data.name='pystdlib_function_rows', not 'pydoc_topics'")),
    ({"seqkd.temperature": 0.0},
     "config.seqkd.temperature must be > 0 (or set config.seqkd.greedy=True), got 0.0"),
    ({"population.size": 2},
     ("config.onpolicy.lambda_=1.0 samples from one student; a population "
      "(config.population.size > 0) trains on the dataset: set config.onpolicy.lambda_=0 or "
      "config.population.size=0")),
])
def test_bad_settings_are_refused_before_compiling(fields, message):
    config = op_config()
    with config.unlocked():
        set_fields(config, **fields)
    assert refusal(lambda: prepare_run(config, teacher_checkpoint_required=False)) == message
