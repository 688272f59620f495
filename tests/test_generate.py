"""KV-cache decoding and the jitted sampler against the uncached forward, filtering masks, EOS,
tracing, and the CLI's pieces (config, model and checkpoint, prompt checks)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from jaxdistill import generate
from jaxdistill.checkpoint import RunCheckpoints
from jaxdistill.generate import filter_logits, sample
from jaxdistill.models import build_model
from jaxdistill.models.decoder import Decoder
from jaxdistill.state import TrainState

V, L = 64, 24


@pytest.fixture(scope="module")
def lm():
    model = build_model("lm_tiny", num_classes=V, input_shape=(L,),
                        rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    return model, *nnx.split(model, nnx.Param)


_jit_forward = nnx.jit(lambda model, tokens: model(tokens)[0])
_decode = nnx.jit(lambda model, tokens, cache, start: model.decode(tokens, cache, start))


def _forward(model, tokens):
    """Uncached logits of [2, <= L] tokens, padded to one compiled shape [2, L] (causal: the
    padding changes nothing before it)."""
    padded = jnp.pad(tokens, ((0, 2 - tokens.shape[0]), (0, L - tokens.shape[1])))
    return _jit_forward(model, padded)[:tokens.shape[0], :tokens.shape[1]]
def _tokens(shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, V, jnp.int32)


def _prompts():
    """Right-padded prompts of lengths 3 and 6 (the padding is junk the sampler must ignore)."""
    return _tokens((2, 6), seed=2), jnp.array([3, 6], jnp.int32)


def test_cached_decode_matches_uncached_forward(lm):
    model, _, _ = lm
    tokens = _tokens((2, L))
    want = _forward(model, tokens)
    cache = model.init_cache(2, L)
    assert len(cache) == 2 and cache[0]["k"].shape == (2, L, 2, 16)
    logits, cache = _decode(model, tokens[:, :8], cache, 0)  # prefill
    np.testing.assert_allclose(logits, want[:, :8], atol=1e-5)
    logits, cache = _decode(model, tokens[:, 8:11], cache, 8)  # a chunk mid-sequence
    np.testing.assert_allclose(logits, want[:, 8:11], atol=1e-5)
    for t in range(11, L):  # then one token per step
        logits, cache = _decode(model, tokens[:, t:t + 1], cache, jnp.array([t, t]))
        np.testing.assert_allclose(logits[:, 0], want[:, t], atol=1e-5)

    # Per-row starts: prompts of 3 and 6 tokens prefilled as one padded [2, 8] block, so the
    # cache holds junk at positions 3..7 and 6..7 until the steps overwrite them.
    lengths = jnp.array([3, 6])
    prompt = jnp.where(jnp.arange(8) < lengths[:, None], tokens[:, :8], V - 1)
    _, cache = _decode(model, prompt, model.init_cache(2, L), 0)
    for i in range(4):
        logits, cache = _decode(model, tokens[jnp.arange(2), lengths + i][:, None], cache,
                                lengths + i)
        for b in range(2):
            np.testing.assert_allclose(logits[b, 0], want[b, int(lengths[b]) + i], atol=1e-5)
    with pytest.raises(ValueError) as e:
        model.init_cache(1, L + 1)
    assert str(e.value) == "Decoder: cache length must be in [1, 24], got 25"


def _argmax_loop(model, prompt, lengths, steps):
    """Greedy continuation by the uncached forward, one token at a time."""
    seqs = [[int(t) for t in prompt[b, :int(lengths[b])]] for b in range(prompt.shape[0])]
    for _ in range(steps):
        logits = _forward(model, jnp.asarray([s + [0] * (L - len(s)) for s in seqs]))
        for s, row in zip(seqs, logits):
            s.append(int(jnp.argmax(row[len(s) - 1])))
    return seqs


def test_greedy_sample_equals_argmax_loop(lm):
    model, graphdef, params = lm
    prompt, lengths = _prompts()
    out = sample(graphdef, params, prompt, lengths, max_new_tokens=6, rng=jax.random.key(0),
                 greedy=True)
    assert out.tokens.shape == out.logprobs.shape == out.generated.shape == (2, 12)
    assert out.tokens.dtype == jnp.int32
    want = _argmax_loop(model, prompt, lengths, 6)
    assert out.tokens[0].tolist() == want[0] + [0, 0, 0]  # 3 + 6 tokens, then padding
    assert out.tokens[1].tolist() == want[1]
    start = np.array([[3], [6]])
    np.testing.assert_array_equal(out.generated, (np.arange(12) >= start) &
                                  (np.arange(12) < start + 6))
    logp = jax.nn.log_softmax(_forward(model, out.tokens))  # teacher-forced on the output
    for b, length in enumerate([3, 6]):
        for j in range(length, length + 6):
            np.testing.assert_allclose(out.logprobs[b, j], logp[b, j - 1, out.tokens[b, j]],
                                       atol=1e-5)
    assert float(jnp.abs(out.logprobs[~out.generated]).max()) == 0.0

    top1 = sample(graphdef, params, prompt, lengths, max_new_tokens=6, rng=jax.random.key(5),
                  top_k=1, temperature=0.7)
    np.testing.assert_array_equal(top1.tokens, out.tokens)


def test_sampling_is_reproducible_and_filtered(lm):
    model, graphdef, params = lm
    prompt, lengths = _prompts()
    settings = {"max_new_tokens": 6, "top_k": 3, "temperature": 2.0}
    a = sample(graphdef, params, prompt, lengths, rng=jax.random.key(7), **settings)
    b = sample(graphdef, params, prompt, lengths, rng=jax.random.key(7), **settings)
    c = sample(graphdef, params, prompt, lengths, rng=jax.random.key(8), **settings)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    logits = _forward(model, a.tokens)
    top3 = np.asarray(jax.lax.top_k(logits, 3)[1])
    for bi, length in enumerate([3, 6]):
        for j in range(length, length + 6):
            assert int(a.tokens[bi, j]) in top3[bi, j - 1]
    greedy = sample(graphdef, params, prompt, lengths, max_new_tokens=6, rng=jax.random.key(7),
                    greedy=True)
    assert not np.array_equal(a.tokens, greedy.tokens)  # temperature 2 over 3 tokens: not argmax


def test_filter_logits_top_k_and_nucleus():
    probs = jnp.array([[0.1, 0.4, 0.2, 0.3]])
    logits = jnp.log(probs)

    def kept(**kw):
        return np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()

    # Sorted: 0.4, 0.3, 0.2, 0.1 (cumulative 0.4, 0.7, 0.9, 1.0): the smallest set with mass >= p.
    assert kept(top_p=0.3) == [False, True, False, False]
    assert kept(top_p=0.65) == [False, True, False, True]
    assert kept(top_p=0.85) == [False, True, True, True]
    assert kept(top_p=0.95) == [True, True, True, True]
    assert kept(top_k=2) == [False, True, False, True]
    assert kept(top_k=3, top_p=0.5) == [False, True, False, True]
    assert kept() == [True] * 4
    np.testing.assert_allclose(filter_logits(logits, temperature=0.5), 2 * logits, rtol=1e-6)
    kept_probs = jax.nn.softmax(filter_logits(logits, top_p=0.65))
    np.testing.assert_allclose(kept_probs, [[0, 4 / 7, 0, 3 / 7]], rtol=1e-6)


def test_eos_stops_a_row(lm):
    _, graphdef, params = lm
    prompt, lengths = _prompts()
    settings = {"max_new_tokens": 6, "top_k": 3, "temperature": 2.0, "rng": jax.random.key(7)}
    free = sample(graphdef, params, prompt, lengths, **settings)
    eos = int(free.tokens[0, 3 + 2])  # row 0's third generated token
    out = sample(graphdef, params, prompt, lengths, eos_id=eos, pad_id=V - 1, **settings)
    for b, length in enumerate([3, 6]):
        generated = free.tokens[b, length:length + 6].tolist()
        stop = generated.index(eos) + 1 if eos in generated else 6
        assert out.tokens[b, :length + stop].tolist() == free.tokens[b, :length + stop].tolist()
        assert out.tokens[b, length + stop:].tolist() == [V - 1] * (6 + 6 - length - stop)
        assert out.generated[b].tolist() == [length <= j < length + stop for j in range(12)]
    assert int(out.generated[0].sum()) <= 3  # row 0 stopped by its third token


def test_traces_once_per_shape_and_settings(lm, monkeypatch):
    _, graphdef, params = lm
    traces = []
    original = Decoder.decode
    monkeypatch.setattr(Decoder, "decode", lambda *a, **k: traces.append(1) or original(*a, **k))
    prompt = _tokens((3, 5), seed=4)
    lengths = jnp.array([5, 2, 4])
    first = sample(graphdef, params, prompt, lengths, max_new_tokens=3, rng=jax.random.key(0),
                   top_p=0.9)
    assert len(traces) == 2  # the prefill and the loop body, traced once
    second = sample(graphdef, params, _tokens((3, 5), seed=5), lengths + 0, max_new_tokens=3,
                    rng=jax.random.key(1), top_p=0.9)
    assert len(traces) == 2 and not np.array_equal(first.tokens, second.tokens)

    nested = jax.jit(lambda p, x, n, r: sample(graphdef, p, x, n, max_new_tokens=3, rng=r,
                                               top_p=0.9).tokens)
    np.testing.assert_array_equal(nested(params, prompt, lengths, jax.random.key(0)),
                                  first.tokens)


def test_sample_argument_errors(lm):
    _, graphdef, params = lm
    prompt, lengths = _prompts()
    kw = {"rng": jax.random.key(0)}
    with pytest.raises(ValueError) as e:
        sample(graphdef, params, prompt, lengths, max_new_tokens=0, **kw)
    assert str(e.value) == "max_new_tokens must be >= 1, got 0"
    with pytest.raises(ValueError) as e:
        sample(graphdef, params, prompt, lengths, max_new_tokens=2, temperature=0.0, **kw)
    assert str(e.value) == "temperature must be > 0 (or use greedy), got 0.0"
    with pytest.raises(ValueError) as e:
        sample(graphdef, params, prompt, lengths, max_new_tokens=2, top_p=0.0, **kw)
    assert str(e.value) == "need top_k >= 0 and 0 < top_p <= 1, got 0 and 0.0"
    with pytest.raises(ValueError) as e:
        sample(graphdef, params, prompt, lengths[:1], max_new_tokens=2, **kw)
    assert str(e.value) == (
        "expected prompt [B, P] and prompt_lengths [B], got shapes (2, 6) and (1,)")
    with pytest.raises(ValueError) as e:
        sample(graphdef, params, prompt, lengths, max_new_tokens=L - 5, **kw)
    assert str(e.value) == "Decoder: cache length must be in [1, 24], got 25"


# ---- The CLI's pieces ----

def _config(student="lm_tiny", teacher="", checkpoint=""):
    return ml_collections.ConfigDict({
        "data": {"name": "text"},
        "student": {"model": student, "kwargs": {"depth": 1}, "num_classes": 0,
                    "dtype": "float32"},
        "teacher": {"model": teacher, "kwargs": {}, "num_classes": 0, "dtype": "float32",
                    "checkpoint": checkpoint}})


def test_config_and_role_errors(tmp_path):
    with pytest.raises(ValueError) as e:
        generate.read_config(str(tmp_path))
    assert str(e.value) == (
        f"no {tmp_path}/config.json: --workdir must be the workdir of a training run")
    (tmp_path / "config.json").write_text(_config().to_json())
    config = generate.read_config(str(tmp_path))
    role_cfg, path = generate.role_model(config, "student", str(tmp_path))
    assert role_cfg.model == "lm_tiny" and path == str(tmp_path)
    with pytest.raises(ValueError) as e:
        generate.role_model(config, "teacher", str(tmp_path))
    assert str(e.value) == f"config.teacher.model is '' in {tmp_path}: that run has no teacher"
    _, path = generate.role_model(_config(teacher="lm_tiny"), "teacher", "/w")
    assert path == "/w/teacher"
    _, path = generate.role_model(_config(teacher="lm_tiny", checkpoint="/t"), "teacher", "/w")
    assert path == "/t"
    with pytest.raises(ValueError) as e:
        generate.role_model(_config(student="resnet20"), "student", "/w")
    assert str(e.value) == ("not an LM run: config.student.model is 'resnet20', an image model; "
                            "generation needs a decoder")
    with pytest.raises(ValueError) as e:
        generate.role_model(_config(student="bert_tiny"), "student", "/w")
    assert str(e.value) == ("not an LM run: config.student.model is 'bert_tiny', an encoder "
                            "model; generation needs a decoder")


def test_load_lm_restores_a_run_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(_config().to_json())
    role_cfg, path = generate.role_model(generate.read_config(str(tmp_path)), "student",
                                         str(tmp_path))
    trained = build_model("lm_tiny", num_classes=V, input_shape=(L,), rngs=nnx.Rngs(3), depth=1)
    _, params, stats = nnx.split(trained, nnx.Param, nnx.BatchStat)
    checkpoints = RunCheckpoints(str(tmp_path), asynchronous=False)
    checkpoints.save(TrainState(step=jnp.int32(7), params={"student": params, "aux": {}},
                                batch_stats=stats, opt_state={}, rng=jax.random.PRNGKey(0),
                                aux_state={}), position=0, metrics={"accuracy": 0.0})
    checkpoints.close()

    info = type("Info", (), {"num_classes": V, "seq_len": L})
    graphdef, restored, max_len = generate.load_lm(role_cfg, path, info)
    assert max_len == L
    jax.tree.map(np.testing.assert_array_equal, restored, params)
    assert graphdef == nnx.graphdef(trained)


def test_encode_prompt_checks_lengths():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(["def f(x):\n    return x\n"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    ids = generate.encode_prompt(tokenizer, "def ", 8, 4)
    assert ids == tokenizer.encode("def ").ids and 1 <= len(ids) <= 4
    with pytest.raises(ValueError) as e:
        generate.encode_prompt(tokenizer, "", 8, 4)
    assert str(e.value) == "--prompt encodes to no tokens; give at least one character"
    long = "zq" * 20
    n = len(tokenizer.encode(long).ids)
    with pytest.raises(ValueError) as e:
        generate.encode_prompt(tokenizer, long, 8, 1)
    assert str(e.value) == f"--prompt is {n} tokens; the model's max length 8 allows at most 7"
    with pytest.raises(ValueError) as e:
        generate.encode_prompt(tokenizer, "def ", 8, 8)
    assert str(e.value) == (f"--max_new_tokens=8: the {len(ids)}-token prompt leaves room for at "
                            f"most {8 - len(ids)} new tokens in the model's max length 8")
