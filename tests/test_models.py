"""Model zoo: hand-derived parameter counts, shapes, dtypes, dropout, BatchNorm, jit round trip.

Full-size models are only traced abstractly (``nnx.eval_shape``); real computation uses small
images and small width/depth overrides to stay fast on two CPU cores.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models import build_model, input_kind, model_names

CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)


# ---- Hand-derived parameter counts (weights + biases + BN scale/shift; no running stats) ----

def _norm(c):
    """Scale and shift of a BatchNorm or LayerNorm over c channels."""
    return 2 * c


def _resnet_count(depth, widths, classes):
    """Stem conv3x3+BN; basic block = 2x (conv3x3+BN) + (1x1 conv+BN if shape changes); FC."""
    n = (depth - 2) // 6
    total = 9 * 3 * widths[0] + _norm(widths[0])
    for s, (cin, cout) in enumerate(itertools.pairwise(widths)):
        first = 9 * cin * cout + 9 * cout * cout + 2 * _norm(cout)
        if s or cin != cout:
            first += cin * cout + _norm(cout)
        total += first + (n - 1) * (2 * 9 * cout * cout + 2 * _norm(cout))
    return total + widths[-1] * classes + classes


def _wrn_count(depth, k, classes):
    """Stem conv3x3 (no BN); block = BN(in)+conv3x3+BN(out)+conv3x3 (+1x1 conv if in != out);
    final BN; FC."""
    n = (depth - 4) // 6
    widths = (16, 16 * k, 32 * k, 64 * k)
    total = 9 * 3 * 16
    for cin, cout in itertools.pairwise(widths):
        first = _norm(cin) + 9 * cin * cout + _norm(cout) + 9 * cout * cout
        if cin != cout:
            first += cin * cout
        total += first + (n - 1) * (2 * _norm(cout) + 2 * 9 * cout * cout)
    return total + _norm(widths[-1]) + widths[-1] * classes + classes


def _vit_count(dim, depth, mlp, tokens, classes, patch=4, channels=3):
    """Patch conv (+bias), class token, position embeddings; per block 2 LNs, qkv and output
    projections (+biases), 2-layer MLP (+biases); final LN; head."""
    block = 2 * _norm(dim) + 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim * mlp + mlp + dim
    return (patch * patch * channels * dim + dim + dim + tokens * dim + depth * block
            + _norm(dim) + dim * classes + classes)


# Exact integers, worked out by hand from the formulas above (CIFAR-100 heads, 65 ViT tokens).
PARAM_COUNTS = {
    "mlp_teacher": 2_395_210,  # 784*1200+1200 + 1200*1200+1200 + 1200*10+10
    "mlp_student": 1_276_810,  # 784*800+800 + 800*800+800 + 800*10+10
    "mlp": 669_706,  # 784*512+512 + 512*512+512 + 512*10+10
    "cnn": 433_348,  # (288+64) + (18432+128) + (7*7*64*128+128) + (128*100+100)
    "resnet20": 278_324,  # stem 464 + stages 14,016 + 51,648 + 205,696 + fc 6,500
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,  # 928 + 57,728 + 230,144 + 919,040 + 25,700
    "resnet32x4": 7_433_860,
    "wrn_40_2": 2_255_156,  # 432 + 107,232 + 427,456 + 1,706,880 + BN 256 + fc 12,900
    "wrn_40_1": 569_780,
    "wrn_16_2": 703_284,
    "wrn_16_1": 180_916,
    "vit_tiny": 5_380_132,  # 12 blocks x 444,864 + 9,408 + 192 + 12,480 + 384 + 19,300
    "vit_small": 21_376_996,
}

RESNETS = {"resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
           "resnet56": (56, (16, 16, 32, 64)), "resnet110": (110, (16, 16, 32, 64)),
           "resnet8x4": (8, (32, 64, 128, 256)), "resnet32x4": (32, (32, 64, 128, 256))}
WRNS = {"wrn_40_2": (40, 2), "wrn_40_1": (40, 1), "wrn_16_2": (16, 2), "wrn_16_1": (16, 1)}
VITS = {"vit_tiny": (192, 3), "vit_small": (384, 6)}  # dim, heads; depth 12, mlp 4*dim


def test_hand_formulas_match_pinned_counts():
    for name, (depth, widths) in RESNETS.items():
        assert _resnet_count(depth, widths, 100) == PARAM_COUNTS[name], name
    for name, (depth, k) in WRNS.items():
        assert _wrn_count(depth, k, 100) == PARAM_COUNTS[name], name
    for name, (dim, _) in VITS.items():
        assert _vit_count(dim, 12, 4 * dim, 65, 100) == PARAM_COUNTS[name], name
    assert PARAM_COUNTS["resnet8x4"] == pytest.approx(1.23e6, rel=4e-3)
    assert PARAM_COUNTS["resnet32x4"] == pytest.approx(7.43e6, rel=1e-3)
    assert PARAM_COUNTS["wrn_40_2"] == pytest.approx(2.25e6, rel=3e-3)
    assert PARAM_COUNTS["wrn_16_2"] == pytest.approx(0.70e6, rel=5e-3)


# ---- Expected feature shapes for every registry name (batch 2) ----

def _expected_features(name):
    if name.startswith("mlp"):
        width = {"mlp_teacher": 1200, "mlp_student": 800, "mlp": 512}[name]
        return {"hidden1": (2, width), "hidden2": (2, width), "embedding": (2, width)}
    if name == "cnn":
        return {"stage1": (2, 14, 14, 32), "stage2": (2, 7, 7, 64), "embedding": (2, 128)}
    if name in RESNETS or name in WRNS:
        if name in RESNETS:
            widths = RESNETS[name][1]
        else:
            k = WRNS[name][1]
            widths = (16, 16 * k, 32 * k, 64 * k)
        return {"stem": (2, 32, 32, widths[0]), "stage1": (2, 32, 32, widths[1]),
                "stage2": (2, 16, 16, widths[2]), "stage3": (2, 8, 8, widths[3]),
                "embedding": (2, widths[3])}
    dim, heads = VITS[name]
    blocks = {f"block{i}": (2, 65, dim) for i in range(1, 13)}
    return {**blocks, "attention12": (2, heads, 65, 65), "embedding": (2, dim)}


def _input_shape(name):
    return MNIST if name.startswith(("mlp", "cnn")) else CIFAR


def _classes(name):
    return 10 if name.startswith("mlp") else 100


def test_every_family_is_covered():
    """Every image model is pinned here (the token models in test_decoder.py)."""
    assert {n for n in model_names() if input_kind(n) == "image"} == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_full_model_abstract(name):
    """Full-size model, traced without allocating: param count, state types, shapes, dtypes."""
    shape = _input_shape(name)
    model = nnx.eval_shape(lambda: build_model(
        name, num_classes=_classes(name), input_shape=shape, rngs=nnx.Rngs(0),
        dtype=jnp.bfloat16))

    _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert len(jax.tree.leaves(rest)) == 0  # no rng state or other variables
    assert sum(p.size for p in jax.tree.leaves(params)) == PARAM_COUNTS[name]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    has_bn = not name.startswith(("mlp", "vit"))
    assert (len(jax.tree.leaves(stats)) > 0) == has_bn

    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    logits, features = nnx.eval_shape(lambda m, x: m(x, train=False), model, x)
    assert logits.shape == (2, _classes(name)) and logits.dtype == jnp.float32
    assert {k: v.shape for k, v in features.items()} == _expected_features(name)
    for key, value in features.items():
        want = jnp.float32 if key.startswith("attention") else jnp.bfloat16
        assert value.dtype == want, key


# ---- Real computation on small configurations ----

@nnx.jit(static_argnames="train")
def _apply(model, x, train=False, rngs=None):
    """One compiled forward (eager op-by-op dispatch is much slower on CPU)."""
    return model(x, train=train, rngs=rngs)


SMALL = {  # name -> (input_shape, overrides): one per conv/attention family, cheap to compile
    "cnn": ((8, 8, 1), {"widths": (4, 8), "hidden": 16}),
    "resnet20": ((8, 8, 3), {"depth": 8, "widths": (4, 4, 8, 8)}),
    "wrn_16_1": ((8, 8, 3), {"depth": 10}),
    "vit_tiny": ((8, 8, 3), {"depth": 2, "dim": 16, "heads": 2}),
}


def _rngs(seed=0):
    # rbg keys: the model code is key-agnostic, and XLA:CPU compiles rbg initialisers several
    # times faster than threefry ones, which dominates this file's run time.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _small(name, dtype=jnp.float32, **kwargs):
    shape, overrides = SMALL[name]
    model = build_model(name, num_classes=5, input_shape=shape, rngs=_rngs(),
                        dtype=dtype, **{**overrides, **kwargs})
    x = jax.random.normal(jax.random.key(1), (2, *shape), jnp.float32)
    return model, x


def _with_dtype(model, name, dtype):
    """The same parameters in a model of another compute dtype (built abstractly, no init)."""
    shape, overrides = SMALL[name]
    twin = nnx.eval_shape(lambda: build_model(name, num_classes=5, input_shape=shape,
                                              rngs=_rngs(), dtype=dtype, **overrides))
    return nnx.merge(nnx.graphdef(twin), nnx.state(model))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_forward_bf16(name):
    model, x = _small(name, dtype=jnp.bfloat16)
    logits, features = _apply(model, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert features["embedding"].dtype == jnp.bfloat16
    ref_logits, _ = _apply(_with_dtype(model, name, jnp.float32), x)
    np.testing.assert_allclose(logits, ref_logits, atol=0.15, rtol=0.1)


def test_vit_attention_probabilities():
    model, x = _small("vit_tiny")
    _, features = _apply(model, x)
    probs = features["attention2"]
    assert "attention1" not in features
    assert probs.shape == (2, 2, 5, 5)  # (8/4)^2 patches + class token
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_mlp_dropout_train_only_and_deterministic():
    model = build_model("mlp_teacher", num_classes=10, input_shape=MNIST, rngs=_rngs())
    x = jax.random.uniform(jax.random.key(1), (4, *MNIST))
    eval_a, eval_feats = _apply(model, x)
    eval_b, _ = _apply(model, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, feats = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=7))
    train_b, _ = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=7))
    train_c, _ = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=8))
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, train_c)
    assert not np.allclose(train_a, eval_a)
    # Features are pre-dropout: the classifier sees the embedding itself only in eval mode.
    np.testing.assert_allclose(model.fc(eval_feats["embedding"]), eval_a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.fc(feats["embedding"]), train_a, atol=1e-3)
    with pytest.raises(ValueError) as e:
        model(x, train=True)
    assert str(e.value) == (
        "MLP: train=True with dropout > 0 needs rngs, e.g. model(x, train=True, "
        "rngs=nnx.Rngs(dropout=key))")


def test_wrn_dropout():
    model, x = _small("wrn_16_1", dropout=0.3)
    with pytest.raises(ValueError) as e:
        model(x, train=True)
    assert str(e.value) == (
        "WideResNet: train=True with dropout > 0 needs rngs, e.g. model(x, train=True, "
        "rngs=nnx.Rngs(dropout=key))")
    a, _ = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=1))
    b, _ = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=1))
    c, _ = _apply(model, x, train=True, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_batchnorm_stats_update_in_train_mode_only():
    model, x = _small("cnn")
    bn = model.stages[0].bn
    _apply(model, x, train=False)
    np.testing.assert_array_equal(bn.mean[...], 0.0)
    np.testing.assert_array_equal(bn.var[...], 1.0)
    conv_out = model.stages[0].conv(x)
    _apply(model, x, train=True)
    # momentum 0.9: running = 0.9 * running + 0.1 * batch statistic (biased variance)
    np.testing.assert_allclose(bn.mean[...], 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * conv_out.var((0, 1, 2)), rtol=1e-5)


def test_split_merge_inside_jit_matches_module_call_and_traces_once():
    model, x = _small("resnet20")
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    traces = []

    @jax.jit
    def forward(params, stats, x):
        traces.append(1)
        m = nnx.merge(graphdef, params, stats)
        logits, features = m(x, train=True)
        return logits, features, nnx.state(m, nnx.BatchStat)

    logits, features, new_stats = forward(params, stats, x)
    forward(params, stats, x + 1.0)
    assert len(traces) == 1
    ref_logits, ref_features = _apply(model, x, train=True)  # updates model's stats
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features["stage3"], ref_features["stage3"], rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 new_stats, nnx.state(model, nnx.BatchStat))


# ---- Errors ----

def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as err:
        build_model("resnet9000", num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0))
    assert str(err.value) == (
        f"unknown model 'resnet9000'; available models: {', '.join(model_names())}")


def test_bad_kwargs_name_the_model():
    with pytest.raises(TypeError) as e:
        build_model("wrn_16_1", num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0),
                    widths=(1, 2))
    assert str(e.value) == (
        "wrn_16_1: unexpected keyword(s) ['widths']; accepted: ['depth', 'dropout', "
        "'widen_factor']")
    with pytest.raises(ValueError) as e:
        build_model("resnet20", num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0), depth=21)
    assert str(e.value) == "resnet20: ResNet depth must be 6n + 2 with n >= 1, got 21"
    with pytest.raises(ValueError) as e:
        build_model("vit_tiny", num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0),
                    patch_size=5)
    assert str(e.value) == "vit_tiny: ViT patch_size 5 must divide the image size 32x32"
    with pytest.raises(ValueError) as e:
        build_model("cnn", num_classes=10, input_shape=(28, 28), rngs=nnx.Rngs(0))
    assert str(e.value) == (
        "cnn: input_shape must be (H, W, C) positive ints for a model of image, got (28, 28)")


def test_wrong_image_shape_is_rejected():
    model = nnx.eval_shape(lambda: build_model("mlp_student", num_classes=10,
                                               input_shape=MNIST, rngs=nnx.Rngs(0)))
    x = jax.ShapeDtypeStruct((2, *CIFAR), jnp.float32)
    with pytest.raises(ValueError) as e:
        nnx.eval_shape(lambda m, x: m(x), model, x)
    assert str(e.value) == "MLP: expected images [B, 28, 28, 1], got shape (2, 32, 32, 3)"
