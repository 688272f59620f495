"""Cross-tokenizer distillation (task cross_tokenizer): the two losses against float64
NumPy references with their gradients, the paired packing's alignment, the refusal of
different vocabularies without a cross-tokenizer term, one train step's terms against a
NumPy reference from the models' own logits, and the demo end to end (byte teacher
trained here, scratch and distilled BPE students)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, set_fields
from refusals import refusal

from jaxdistill import experiment, losses, validate
from jaxdistill.data import tokenizer, xtok_builders, xtok_packing
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import forward, train_step
from jaxdistill.tasks.cross_tokenizer import prepare

TINY = {"data.name": "pydoc_topics", "data.max_documents": 12, "data.vocab_size": 300,
        "data.seq_len": 16, "data.teacher_seq_len": 48, "teacher.model": "lm_tiny",
        "student.model": "lm_tiny",
        "student.kwargs": {"dim": 16, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 32},
        "teacher.kwargs": {"dim": 16, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 32},
        "teacher.train.num_steps": 3, "num_steps": 3, "batch_size": 8, "eval_batch_size": 16,
        "log_every": 3, "eval_every": 3, "checkpoint_every": 3}


def _softmax(x, t=1.0):
    z = np.asarray(x, np.float64) / t
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def np_uld(s, t, temperature=1.0):
    """Sorted, zero-padded probability vectors; sum of absolute differences."""
    a, b = -np.sort(-_softmax(s, temperature), -1), -np.sort(-_softmax(t, temperature), -1)
    n = max(a.shape[-1], b.shape[-1])
    pad = lambda x: np.concatenate([x, np.zeros((*x.shape[:-1], n - x.shape[-1]))], -1)
    return np.abs(pad(a) - pad(b)).sum(-1)


def np_merged_kl(s, t, token_map, temperature=1.0):
    p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
    q = np.zeros(p_t.shape)
    for v, u in enumerate(token_map):
        q[..., u] += p_s[..., v]
    return temperature ** 2 * (p_t * (np.log(p_t) - np.log(q))).sum(-1)


def check_gradient(fn, reference, x, eps=1e-6):
    """JAX's gradient of sum(fn) (float64) against central differences of the float64
    NumPy `reference` along random directions."""
    with jax.enable_x64():
        grad = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))(jnp.asarray(x, jnp.float64)))
    for seed in range(3):
        d = np.random.default_rng(seed).normal(size=x.shape)
        numeric = (reference(x + eps * d).sum() - reference(x - eps * d).sum()) / (2 * eps)
        np.testing.assert_allclose((grad * d).sum(), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("vs,vt,temperature", [(11, 4, 1.0), (3, 6, 2.0)])
def test_uld_matches_numpy_and_its_gradient_checks(vs, vt, temperature):
    rng = np.random.default_rng(vs)
    s, t = rng.normal(size=(2, 3, vs)) * 2, rng.normal(size=(2, 3, vt)) * 2
    got = jax.jit(losses.uld_loss, static_argnames="temperature")(
        jnp.float32(s), jnp.float32(t), temperature=temperature)
    np.testing.assert_allclose(got, np_uld(s, t, temperature), rtol=1e-5, atol=1e-6)
    check_gradient(lambda x: losses.uld_loss(x, jnp.asarray(t), temperature=temperature),
                   lambda x: np_uld(x, t, temperature), s)
    assert np.allclose(jax.jit(losses.uld_loss)(jnp.float32(t), jnp.float32(t)), 0.0, atol=1e-6)


def test_merged_kl_matches_numpy_and_its_gradient_checks():
    rng = np.random.default_rng(0)
    token_map = np.array([0, 1, 2, 3, 2, 2, 1, 3, 3])
    s, t = rng.normal(size=(2, 5, 9)) * 3, rng.normal(size=(2, 5, 4))
    for temperature in (1.0, 2.5):
        got = jax.jit(losses.merged_kl, static_argnames="temperature")(
            jnp.float32(s), jnp.float32(t), jnp.asarray(token_map), temperature=temperature)
        np.testing.assert_allclose(got, np_merged_kl(s, t, token_map, temperature), rtol=1e-5,
                                   atol=1e-6)
    check_gradient(lambda x: losses.merged_kl(x, jnp.asarray(t), jnp.asarray(token_map)),
                   lambda x: np_merged_kl(x, t, token_map), s)


def test_packing_aligns_both_tokenizations_on_the_same_text():
    texts = ["def f(x):\n    return x  # héllo wörld ✓\n" * 3, "naïve café ✓✓ ok\n" * 4,
             "short"]
    student = tokenizer.train(texts, 264)  # few merges: multi-byte characters stay split
    teacher = xtok_builders.byte_tokenizer()
    pairs = [(*s, *t) for s, t in zip(xtok_builders.encode_with_offsets(student, texts),
                                      xtok_builders.encode_with_offsets(teacher, texts))]
    w = xtok_packing.pack(pairs, 12, 40, 0, 0)
    token_map = xtok_builders.first_teacher_token(student)
    align, real = w["align"], w["weights"] > 0
    assert (w["teacher_segment_ids"] > 0).sum(1).max() <= 40
    assert 0.8 < (align[real] >= 0).mean() < 1.0  # ✓ and accents split across BPE tokens
    # each aligned position's teacher target is the first byte of the student's target
    t_targets = np.take_along_axis(w["teacher_targets"], np.maximum(align, 0), 1)
    ok = align >= 0
    np.testing.assert_array_equal(t_targets[ok], token_map[w["targets"][ok]])
    # the teacher's weighted targets are the student's target text, window by window
    for i in range(len(align)):
        s_text = student.decode(w["targets"][i][real[i]].tolist(), skip_special_tokens=False)
        t_text = teacher.decode(w["teacher_targets"][i][w["teacher_weights"][i] > 0].tolist(),
                                skip_special_tokens=False)
        assert s_text == t_text
    # every token of every document is packed once as a target, end-of-text included
    assert real.sum() == sum(len(p[0]) + 1 - 1 for p in pairs)


@pytest.mark.parametrize("task,fields,message", [
    ("cross_tokenizer", {"objective": {"ce": {"weight": 1.0}, "kd": {"weight": 1.0}}},
     ("config.objective: the teacher's vocabulary (258 tokens) differs from the student's (300 "
      "tokens) and no term compares different vocabularies; add one of ['uld', 'xtok_kl'], "
      "e.g. xtok_kl=dict(weight=0.5)")),
    ("causal_lm", {"teacher.num_classes": 258},
     ("config.teacher.num_classes: a vocabulary of 258 differs from the 300 tokens of "
      "config.data.vocab_size; teacher and student share the dataset's tokenizer: set it to 0 "
      "(a teacher with its own: task 'cross_tokenizer')")),
    ("cross_tokenizer", {"teacher.num_classes": 300},
     ("config.teacher.num_classes: the teacher reads the byte tokenizer's 258 tokens in task "
      "'cross_tokenizer'; set it to 0")),
])
def test_different_vocabularies_without_a_cross_tokenizer_term_are_refused(task, fields,
                                                                          message):
    config = set_fields(load_config("lm_xtok", "runlocal"), **TINY)
    with config.unlocked():
        config.task = task
        set_fields(config, **{k: v for k, v in fields.items() if k != "objective"})
        if "objective" in fields:
            config.objective = fields["objective"]
        if task == "causal_lm":
            config.objective = {"ce": {"weight": 1.0}, "kd": {"weight": 1.0}}
    assert refusal(lambda: validate.check_config(config)) == message


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("xtok_demo"))
    config = set_fields(load_config("lm_xtok", "runlocal"), **TINY)
    return workdir, config, experiment.run(config, workdir)


def test_demo_trains_a_byte_teacher_and_both_bpe_students(demo):
    workdir, config, summary = demo
    with open(os.path.join(workdir, "teacher", "config.json")) as f:
        teacher_cfg = json.load(f)
    assert teacher_cfg["task"] == "causal_lm" and teacher_cfg["data"]["vocab_size"] == 258
    assert teacher_cfg["data"]["seq_len"] == 48
    for key in ("student_perplexity", "scratch_perplexity", "teacher_perplexity"):
        assert np.isfinite(summary[key]) and summary[key] > 1.0, key
    assert 0.0 <= summary["agreement"] <= 1.0 and summary["kl"] > 0
    # the teacher's NLL per student token is its NLL per byte times the test split's bytes
    # per student token: both sum its loss over the same bytes, the student's target text
    meta = prepare(config.data).metadata
    per_token = meta["teacher_target_tokens"]["test"] / meta["target_tokens"]["test"]
    np.testing.assert_allclose(math.log(summary["teacher_perplexity"]),
                               summary["teacher_bits_per_byte"] * math.log(2) * per_token,
                               rtol=1e-5)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r.get("split") == "train" or "xtok_kl" in r]
    assert train and all(np.isfinite(r["xtok_kl"]) and r["xtok_kl"] > 0 for r in train)
    assert all(np.isfinite(r["uld"]) and r["uld"] > 0 for r in train)


def test_step_terms_equal_numpy_on_the_models_own_logits(demo):
    """The jitted step's xtok_kl and uld values equal the NumPy references evaluated on
    the student's logits and the teacher's logits gathered at the aligned positions."""
    workdir, config, _ = demo
    with config.unlocked():
        config.teacher.checkpoint = os.path.join(workdir, "teacher")
    setup = prepare_run(config)
    from jaxdistill.data import make_train_iterator
    from jaxdistill.train import load_teachers
    teacher = load_teachers(setup)
    state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
    batch = next(make_train_iterator(setup.info, split="train", reader="grain",
                                     global_batch_size=8, seed=0,
                                     sharding=setup.batch_sharding))
    step = jax.jit(lambda s, t, b: train_step(setup.ctx, s, t, b))
    _, metrics = step(state, teacher, batch)
    s_logits = forward(setup.ctx.student_def, state.params["student"], state.batch_stats,
                       batch["inputs"], train=True, segment_ids=batch["segment_ids"],
                       positions=batch["positions"])[0]
    t_logits = forward(setup.ctx.teacher_def, teacher["params"], teacher["batch_stats"],
                       batch["teacher_inputs"], train=False,
                       segment_ids=batch["teacher_segment_ids"],
                       positions=batch["teacher_positions"])[0]
    align, w = np.asarray(batch["align"]), np.asarray(batch["weights"])
    t_at = np.take_along_axis(np.asarray(t_logits, np.float64), np.maximum(align, 0)[..., None],
                              1)
    aligned = (align >= 0) * w
    token_map = xtok_builders.first_teacher_token(tokenizer.load_tokenizer(setup.info))
    s64 = np.asarray(s_logits, np.float64)
    want_kl = (np_merged_kl(s64, t_at, token_map) * aligned).sum() / w.sum()
    want_uld = (np_uld(s64, t_at) * aligned).sum() / w.sum()
    np.testing.assert_allclose(metrics["xtok_kl"], want_kl, rtol=2e-4)
    np.testing.assert_allclose(metrics["uld"], want_uld, rtol=2e-4)
