"""The Llama-style decoder: against a float64 NumPy implementation, causality and packing,
GQA, tied/untied heads, bf16, gradients, features, logical axis names, parameter counts and the
registry's input kinds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models import build_model, input_kind, logical_axes, model_names

V, L = 64, 16  # test vocabulary and max length


def _rngs(seed=0):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # rbg: faster CPU init compiles


def _build(name="lm_tiny", dtype=jnp.float32, seed=0, **kwargs):
    return build_model(name, num_classes=V, input_shape=(L,), rngs=_rngs(seed), dtype=dtype,
                       **kwargs)


def _randomize(model, seed=1):
    """Norm scales away from 1 (the init), so that the reference check sees them (NumPy noise:
    eager JAX ops would compile once per shape)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
        lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype) if p.ndim == 1 else p,
        state))
    return model


@nnx.jit(static_argnames=("attention_maps", "logits", "train"))
def _jit_apply(model, tokens, segment_ids, positions, attention_maps, logits, train, rngs):
    return model(tokens, train=train, rngs=rngs, segment_ids=segment_ids, positions=positions,
                 attention_maps=attention_maps, logits=logits)


def _apply(model, tokens, segment_ids=None, positions=None, attention_maps=False, logits=True,
           train=False, rngs=None):
    """One compiled forward per model and mode: tokens [B <= 2, L' <= L] are padded to [2, L]
    (causal: padding after a position changes nothing at it), one document unless given."""
    b, n = tokens.shape
    if segment_ids is None:
        segment_ids = jnp.ones((b, n), jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(n), (b, n))
    pad = ((0, 2 - b), (0, L - n))
    logits, features = _jit_apply(model, jnp.pad(tokens, pad), jnp.pad(segment_ids, pad),
                                  jnp.pad(positions, pad), attention_maps, logits, train, rngs)
    return (None if logits is None else logits[:b, :n]), features


def _tokens(shape, seed=2):
    return jax.random.randint(jax.random.key(seed), shape, 0, V, jnp.int32)


@pytest.fixture(scope="module")
def tiny():
    return _randomize(_build())


# ---- An independent float64 NumPy implementation ----

def _np_rms(x, scale, eps=1e-5):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def _np_rope(x, positions, theta=10_000.0):
    """Rotation as complex multiplication: feature i pairs with i + H/2."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    angle = positions[:, :, None, None] * theta ** (-2.0 * np.arange(half) / x.shape[-1])
    z = z * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


def _np_forward(p, tokens, segment_ids, positions, heads, kv_heads):
    x = p["embedding"][tokens]
    length = tokens.shape[1]
    allowed = (np.arange(length)[None, :] <= np.arange(length)[:, None])[None] & (
        segment_ids[:, :, None] == segment_ids[:, None, :])
    for i in range(len(p["blocks"])):
        blk = p["blocks"][i]
        h = _np_rms(x, blk["attn_norm"]["scale"])
        a = blk["attn"]
        q = _np_rope(np.einsum("bld,dnh->blnh", h, a["q"]), positions)
        k = _np_rope(np.einsum("bld,dnh->blnh", h, a["k"]), positions)
        v = np.einsum("bld,dnh->blnh", h, a["v"])
        context = np.zeros_like(q)
        for n in range(heads):
            g = n // (heads // kv_heads)
            s = np.einsum("bqh,bkh->bqk", q[:, :, n], k[:, :, g]) / np.sqrt(q.shape[-1])
            s = np.where(allowed, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            context[:, :, n] = np.einsum("bqk,bkh->bqh", w / w.sum(-1, keepdims=True), v[:, :, g])
        x = x + np.einsum("blnh,nhd->bld", context, a["o"])
        h = _np_rms(x, blk["mlp_norm"]["scale"])
        m = blk["mlp"]
        gate = h @ m["gate"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ m["up"])) @ m["down"]
    return _np_rms(x, p["norm"]["scale"]) @ p["embedding"].T


def _packed_inputs():
    """Row 0: a 7-token and a 6-token document then 3 padding tokens; row 1: one document."""
    tokens = _tokens((2, L))
    segment_ids = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * L], np.int32)
    positions = np.array([list(range(7)) + list(range(6)) + [0] * 3, list(range(L))], np.int32)
    return tokens, jnp.asarray(segment_ids), jnp.asarray(positions)


def test_forward_matches_float64_numpy(tiny):
    tokens, segment_ids, positions = _packed_inputs()
    logits, _ = _apply(tiny, tokens, segment_ids, positions)
    params = jax.tree.map(lambda x: np.asarray(x, np.float64),
                          nnx.to_pure_dict(nnx.state(tiny, nnx.Param)))
    want = _np_forward(params, np.asarray(tokens), np.asarray(segment_ids),
                       np.asarray(positions), heads=4, kv_heads=2)
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    assert np.abs(want).max() > 0.5  # a non-trivial output
    np.testing.assert_allclose(logits, want, atol=2e-5, rtol=1e-5)


def test_causal_and_packed_documents(tiny):
    tokens = _tokens((1, L))
    t = 9
    both, _ = _apply(tiny, jnp.concatenate([tokens, tokens.at[0, t].set((tokens[0, t] + 1) % V)]))
    a, b = both[:1], both[1:]
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min() > 1e-4  # every later position moved

    packed, segment_ids, positions = _packed_inputs()
    logits, _ = _apply(tiny, packed, segment_ids, positions)
    assert bool(jnp.all(jnp.isfinite(logits)))  # the padding segment included
    alone, _ = _apply(tiny, jnp.stack([packed[0, :7], packed[0, 7:14]]))  # + 1 padding token
    np.testing.assert_allclose(logits[0, :7], alone[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 7:13], alone[1, :6], atol=1e-5)


def test_gqa_equals_multi_head_with_shared_kv(tiny):
    """kv_heads=2 of 4 heads is multi-head attention whose heads 2g and 2g + 1 share key/value
    weights g."""
    mha = _build(kv_heads=4)
    state = nnx.to_pure_dict(nnx.state(tiny, nnx.Param))
    for blk in state["blocks"].values():
        for name in ("k", "v"):
            blk["attn"][name] = jnp.repeat(blk["attn"][name], 2, axis=1)
    mha_state = nnx.state(mha, nnx.Param)
    nnx.replace_by_pure_dict(mha_state, state)
    nnx.update(mha, mha_state)
    tokens = _tokens((2, L))
    np.testing.assert_allclose(_apply(mha, tokens)[0], _apply(tiny, tokens)[0], atol=1e-5)


def test_untied_head_and_bf16(tiny):
    untied = _build(tie_embeddings=False)
    assert untied.head.shape == (64, V)
    state = nnx.to_pure_dict(nnx.state(tiny, nnx.Param))
    untied_state = nnx.state(untied, nnx.Param)
    nnx.replace_by_pure_dict(untied_state, {**state, "head": state["embedding"].T})
    nnx.update(untied, untied_state)
    tokens = _tokens((2, L))
    want, _ = _apply(tiny, tokens)
    np.testing.assert_allclose(_apply(untied, tokens)[0], want, atol=1e-6)

    twin = nnx.eval_shape(lambda: _build(dtype=jnp.bfloat16))
    bf16 = nnx.merge(nnx.graphdef(twin), nnx.state(tiny))
    logits, features = _apply(bf16, tokens, attention_maps=True)
    assert logits.dtype == jnp.float32 and features["hidden"].dtype == jnp.bfloat16
    assert features["attn1"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(logits, want, atol=0.1)


def test_hidden_head_and_attention_maps(tiny):
    tokens, segment_ids, positions = _packed_inputs()
    logits, features = _apply(tiny, tokens, segment_ids, positions)
    assert set(features) == {"block1", "block2", "hidden", "last_hidden"}
    assert all(f.shape == (2, L, 64) for f in features.values())
    np.testing.assert_array_equal(jax.jit(tiny.logits_from_hidden)(features["hidden"]), logits)
    none, no_head = _apply(tiny, tokens, segment_ids, positions, logits=False)
    assert none is None
    np.testing.assert_array_equal(no_head["hidden"], features["hidden"])

    mapped, features = _apply(tiny, tokens, segment_ids, positions, attention_maps=True)
    np.testing.assert_allclose(mapped, logits, atol=1e-5)
    allowed = np.tril(np.ones((L, L), bool)) & (
        np.asarray(segment_ids)[:, :, None] == np.asarray(segment_ids)[:, None, :])
    for i in (1, 2):
        probs = np.asarray(features[f"attn{i}"])
        assert probs.shape == (2, 4, L, L) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(probs[np.broadcast_to(~allowed[:, None], probs.shape)], 0.0)
        assert probs[np.broadcast_to(allowed[:, None], probs.shape)].min() > 0


def test_gradients_finite_and_match_finite_differences():
    """float64 gradients (explicit attention: the fused XLA path runs its softmax in float32
    whatever the input dtype) match a central difference along a random direction; the float32
    gradients of the fused path are finite, nonzero and close to them."""
    tokens, segment_ids, positions = _packed_inputs()
    graphdef, params = nnx.split(_randomize(_build(depth=1)), nnx.Param)

    def loss(graphdef, params, explicit):
        logits, _ = nnx.merge(graphdef, params)(tokens, segment_ids=segment_ids,
                                                 positions=positions, attention_maps=explicit)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grads = jax.jit(jax.grad(lambda p: loss(graphdef, p, False)))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
               for g in jax.tree.leaves(grads))

    rng = np.random.default_rng(3)
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    direction = jax.tree.map(lambda x: rng.normal(size=x.shape), params64)
    with jax.enable_x64(True):
        graphdef64 = nnx.graphdef(nnx.eval_shape(lambda: _build(depth=1, dtype=jnp.float64)))
        grads64 = jax.jit(jax.grad(lambda p: loss(graphdef64, p, True)))(params64)
        along = jax.jit(lambda t: loss(graphdef64, jax.tree.map(lambda x, d: x + t * d,
                                                                params64, direction), True))
        eps = 1e-6  # central-difference error ~ eps**2
        numeric = (float(along(eps)) - float(along(-eps))) / (2 * eps)
    analytic = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(grads64),
                                                 jax.tree.leaves(direction)))
    assert abs(analytic) > 1e-3
    np.testing.assert_allclose(numeric, analytic, rtol=1e-7)
    for g, g64 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads64)):
        np.testing.assert_allclose(g, g64, rtol=2e-3, atol=1e-6)


def test_dropout_needs_rngs_and_is_keyed():
    model = _build(dropout=0.5)
    tokens = _tokens((2, L))
    with pytest.raises(ValueError) as e:
        model(tokens, train=True)
    assert str(e.value) == (
        "Decoder: train=True with dropout > 0 needs rngs, e.g. model(x, train=True, "
        "rngs=nnx.Rngs(dropout=key))")
    a, _ = _apply(model, tokens, train=True, rngs=nnx.Rngs(dropout=1))
    b, _ = _apply(model, tokens, train=True, rngs=nnx.Rngs(dropout=1))
    c, _ = _apply(model, tokens, train=True, rngs=nnx.Rngs(dropout=2))
    e, _ = _apply(model, tokens)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, e)


# ---- Logical axis names ----

NAMES = {"vocab", "embed", "heads", "kv_heads", "kv", "mlp", "norm"}


@pytest.mark.parametrize("tie", [True, False])
def test_every_decoder_param_has_logical_names(tie):
    model = nnx.eval_shape(lambda: _build(tie_embeddings=tie))
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    axes = logical_axes(params)
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=lambda x:
                                                               isinstance(x, tuple))))
    assert len(pairs) == (20 if tie else 21) and not jax.tree.leaves(stats)
    for param, names in pairs:
        assert len(names) == param.ndim and set(names) <= NAMES, names
    assert axes["embedding"] == ("vocab", "embed")
    assert axes["blocks"][0]["attn"]["q"] == ("embed", "heads", "kv")
    assert axes["blocks"][1]["attn"]["v"] == ("embed", "kv_heads", "kv")
    assert axes["blocks"][0]["mlp"]["down"] == ("mlp", "embed")
    assert axes["norm"]["scale"] == ("norm",)
    if not tie:
        assert axes["head"] == ("embed", "vocab")


def test_image_model_params_have_no_names():
    model = nnx.eval_shape(lambda: build_model("vit_tiny", num_classes=10, input_shape=(8, 8, 3),
                                               rngs=nnx.Rngs(0), depth=1))
    _, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    axes = jax.tree.leaves(logical_axes(params), is_leaf=lambda x: isinstance(x, tuple))
    assert [len(a) for a in axes] == [p.ndim for p in jax.tree.leaves(params)]
    assert all(name is None for a in axes for name in a)


# ---- Parameter counts ----

def _count(vocab, dim, depth, heads, kv_heads, mlp_dim, tie=True):
    """Embedding; per block 2 RMSNorm scales, q and o (dim x dim), k and v
    (dim x kv_heads * head_dim), gate, up and down (dim x mlp); final norm; untied head."""
    kv = kv_heads * dim // heads
    block = 2 * dim + 2 * dim * dim + 2 * dim * kv + 3 * dim * mlp_dim
    return vocab * dim + depth * block + dim + (0 if tie else dim * vocab)


SIZES = {  # name -> (dim, depth, heads, kv_heads, mlp_dim)
    "lm_tiny": (64, 2, 4, 2, 128), "lm_student": (128, 2, 4, 2, 256),
    "lm_teacher": (256, 4, 4, 2, 384), "lm_20m": (384, 6, 6, 2, 1024),
    "lm_small": (512, 8, 8, 4, 1408), "lm_base": (768, 12, 12, 4, 2048),
}
COUNTS = {  # (V=8192, V=32768), tied
    "lm_tiny": (598_336, 2_171_200), "lm_student": (1_344_128, 4_489_856),
    "lm_teacher": (4_065_536, 10_356_992), "lm_20m": (12_587_904, 22_025_088),
    "lm_small": (27_795_968, 40_378_880), "lm_base": (81_808_128, 100_682_496),
}


def _params(model):
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_lm_tiny_param_count_pinned():
    # 64*64 embedding + 2 x (128 norms + 4096 q + 2048 k + 2048 v + 4096 o + 3 x 8192 mlp) + 64
    assert _params(nnx.eval_shape(_build)) == 78_144 == _count(V, *SIZES["lm_tiny"])
    untied = nnx.eval_shape(lambda: _build(tie_embeddings=False))  # + a 64 x 64 head
    assert _params(untied) == 82_240 == _count(V, *SIZES["lm_tiny"], tie=False)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_registered_sizes(name):
    for vocab, pinned in zip((8192, 32768), COUNTS[name]):
        assert _count(vocab, *SIZES[name]) == pinned
        model = nnx.eval_shape(lambda v=vocab: build_model(name, num_classes=v, input_shape=(64,),
                                                           rngs=nnx.Rngs(0)))
        assert _params(model) == pinned
    dim, depth = SIZES[name][:2]
    tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    logits, features = nnx.eval_shape(lambda m, x: m(x), model, tokens)
    assert logits.shape == (2, 64, 32768) and logits.dtype == jnp.float32
    assert set(features) == {f"block{i}" for i in range(1, depth + 1)} | {"hidden", "last_hidden"}
    assert features["hidden"].shape == (2, 64, dim)


# ---- Registry ----

def test_input_kinds_and_shape_checks():
    kinds = {name: input_kind(name) for name in model_names()}
    tokens = {n for n, k in kinds.items() if k == "tokens"}
    assert tokens - {n for n in tokens if n.startswith("bert_")} == set(SIZES) | {"decoder", "gpt2"}
    assert set(kinds.values()) == {"image", "tokens"}
    with pytest.raises(ValueError) as e:
        build_model("lm_tiny", num_classes=V, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    assert str(e.value) == (
        "lm_tiny: input_shape must be (max_len,) positive ints for a model of tokens, got (32, "
        "32, 3)")
    with pytest.raises(ValueError) as e:
        build_model("resnet20", num_classes=10, input_shape=(128,), rngs=nnx.Rngs(0))
    assert str(e.value) == (
        "resnet20: input_shape must be (H, W, C) positive ints for a model of image, got "
        "(128,)")
    with pytest.raises(ValueError) as e:
        input_kind("lm_huge")
    assert str(e.value) == f"unknown model 'lm_huge'; available models: {', '.join(model_names())}"
    with pytest.raises(ValueError) as e:
        _build(kv_heads=3)
    assert str(e.value) == "lm_tiny: Decoder heads 4 must be a multiple of kv_heads 3"
    with pytest.raises(ValueError) as e:
        nnx.eval_shape(lambda: build_model("lm_tiny", num_classes=V, input_shape=(1025,),
                                           rngs=nnx.Rngs(0)))
    assert str(e.value) == (
        "lm_tiny: sequence length 1025 (config.data.seq_len) exceeds the model's max_seq_len "
        "1024; lower it, or raise kwargs.max_seq_len where rotary positions extrapolate")
    nnx.eval_shape(lambda: build_model("lm_tiny", num_classes=V, input_shape=(1025,),
                                       rngs=nnx.Rngs(0), max_seq_len=2048))
    model = nnx.eval_shape(_build)
    for bad in (jax.ShapeDtypeStruct((2, L + 1), jnp.int32),
                jax.ShapeDtypeStruct((2, L), jnp.float32),
                jax.ShapeDtypeStruct((2, L, 1), jnp.int32)):
        with pytest.raises(ValueError) as e:
            nnx.eval_shape(lambda m, x: m(x), model, bad)
        assert str(e.value) == (f"Decoder: expected integer tokens [B, L] with L <= {L}, got "
                                f"{bad.dtype} shape {bad.shape}")
    with pytest.raises(ValueError) as e:
        nnx.eval_shape(lambda m: m(jnp.zeros((2, 4), jnp.int32), positions=jnp.zeros((2, 5))),
                       model)
    assert str(e.value) == "Decoder: positions must have the tokens' shape (2, 4), got (2, 5)"


def test_remat_gives_the_same_loss_and_gradients():
    """Rematerialised blocks recompute the same values in the backward pass."""
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, V)

    def value_and_grad(remat):
        model = build_model("lm_tiny", num_classes=V, input_shape=(16,), rngs=nnx.Rngs(0),
                            remat=remat)
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            logits, _ = nnx.merge(graphdef, p)(x, train=True)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])
        return jax.value_and_grad(loss)(params), jax.make_jaxpr(jax.grad(loss))(params)

    (plain, plain_grads), plain_jaxpr = value_and_grad(False)
    (remat, remat_grads), remat_jaxpr = value_and_grad(True)
    recomputes = ("checkpoint", "remat")
    assert any(p in str(remat_jaxpr) for p in recomputes)
    assert not any(p in str(plain_jaxpr) for p in recomputes)
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError) as e:
        build_model("lm_tiny", num_classes=V, input_shape=(16,), rngs=nnx.Rngs(0), remat=True,
                    dropout=0.1)
    assert str(e.value) == (
        "lm_tiny: Decoder remat recomputes blocks without their dropout keys; use remat=True "
        "with dropout=0")
