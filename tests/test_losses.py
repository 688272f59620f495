"""Loss library: float64 NumPy references, hand-derived values, gradients, errors, tracing.

The references below are written independently of the library (loops and plain NumPy in
float64); the library computes in float32, hence the tolerances.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdistill import losses as L

RTOL, ATOL = 2e-5, 2e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


class _Jitted:
    """`J.name(*arrays, **options)` = jit(partial(L.name, **options))(*arrays): one compile per
    call instead of op-by-op dispatch (much cheaper on CPU); options stay static Python values."""

    def __getattr__(self, name):
        f = getattr(L, name)

        def call(*args, **kwargs):
            return jax.jit(functools.partial(f, **kwargs))(*args)

        return call


J = _Jitted()


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual)
    assert actual.dtype == np.float32, actual.dtype
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------- float64 NumPy references


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x))
    return e / e.sum()


def ref_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def rows(x):
    """Iterates over all vectors along the last axis; returns (iterator, leading shape)."""
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def ref_divergence(kind, s, t, tau, beta=0.5):
    s_rows, lead = rows(s)
    t_rows, _ = rows(t)
    out = []
    for a, b in zip(s_rows, t_rows):
        ps, pt = ref_softmax(a / tau), ref_softmax(b / tau)
        if kind == "fkl":
            out.append(ref_kl(pt, ps))
        elif kind == "rkl":
            out.append(ref_kl(ps, pt))
        elif kind == "jsd":
            m = beta * pt + (1 - beta) * ps
            out.append(beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m))
        elif kind == "tvd":
            out.append(0.5 * np.abs(pt - ps).sum())
    return np.array(out).reshape(lead)


def ref_standardize(x):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / (1e-7 + x.std(-1, ddof=1, keepdims=True))


def ref_kd(s, t, tau, standardize=False):
    if standardize:
        s, t = ref_standardize(s), ref_standardize(t)
    return tau**2 * ref_divergence("fkl", s, t, tau)


def ref_ce(logits, labels, eps):
    c = logits.shape[-1]
    out = []
    for x, y in zip(logits.reshape(-1, c), labels.reshape(-1)):
        target = np.full(c, eps / c)
        target[int(y)] += 1 - eps
        out.append(-(target * np.log(ref_softmax(x))).sum())
    return np.array(out).reshape(labels.shape)


def ref_dkd(s, t, y, alpha, beta, tau):
    """Official mdistiller construction, but NCKD over the non-target classes by deletion."""
    out = []
    for a, b, label in zip(np.asarray(s, np.float64), np.asarray(t, np.float64), y):
        ps, pt = ref_softmax(a / tau), ref_softmax(b / tau)
        bs = [ps[label], ps.sum() - ps[label]]
        bt = [pt[label], pt.sum() - pt[label]]
        tckd = ref_kl(bt, bs)
        nckd = ref_kl(
            ref_softmax(np.delete(b, label) / tau), ref_softmax(np.delete(a, label) / tau)
        )
        out.append(tau**2 * (alpha * tckd + beta * nckd))
    return np.array(out)


def ref_hint(s, t):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    return np.array([np.mean((s[i] - t[i]) ** 2) for i in range(s.shape[0])])


def ref_at_map(f, p):
    f = np.asarray(f, np.float64)
    out = []
    for x in f:
        a = np.zeros(x.shape[0] * x.shape[1])
        for h in range(x.shape[0]):
            for w in range(x.shape[1]):
                a[h * x.shape[1] + w] = np.mean(np.abs(x[h, w]) ** p)
        out.append(a / max(np.sqrt(np.sum(a * a)), 1e-12))
    return np.array(out)


def ref_at(s, t, p):
    return np.mean((ref_at_map(s, p) - ref_at_map(t, p)) ** 2, axis=1)


def ref_sp(s, t):
    b = s.shape[0]

    def gram(f):
        f = np.asarray(f, np.float64).reshape(b, -1)
        g = np.array([[f[i] @ f[j] for j in range(b)] for i in range(b)])
        return np.array([r / max(np.linalg.norm(r), 1e-12) for r in g])

    return np.sum((gram(s) - gram(t)) ** 2) / b**2


def ref_smooth_l1(x, y):
    d = np.abs(np.asarray(x) - np.asarray(y)).ravel()
    return np.mean([0.5 * v * v if v < 1 else v - 0.5 for v in d])


def ref_rkd(s, t, wd, wa):
    """RepDistiller RKDLoss, transcribed: Gram-form pdist with clamp, F.normalize, bmm."""

    def pdist(e):
        sq = (e**2).sum(1)
        res = np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12)
        res = np.sqrt(res)
        np.fill_diagonal(res, 0.0)
        return res / res[res > 0].mean()

    def angles(e):
        b = e.shape[0]
        out = np.zeros((b, b, b))
        for i in range(b):
            n = [(e[j] - e[i]) / max(np.linalg.norm(e[j] - e[i]), 1e-12) for j in range(b)]
            for j in range(b):
                for k in range(b):
                    out[i, j, k] = n[j] @ n[k]
        return out

    s = np.asarray(s, np.float64).reshape(s.shape[0], -1)
    t = np.asarray(t, np.float64).reshape(t.shape[0], -1)
    return wd * ref_smooth_l1(pdist(s), pdist(t)) + wa * ref_smooth_l1(angles(s), angles(t))


def ref_pkt(s, t, eps=1e-7):
    def probs(e):
        e = np.asarray(e, np.float64).reshape(e.shape[0], -1)
        e = e / (np.sqrt((e**2).sum(1, keepdims=True)) + eps)
        sim = (e @ e.T + 1) / 2
        return sim / sim.sum(1, keepdims=True)

    qs, qt = probs(s), probs(t)
    return np.mean(qt * np.log((qt + eps) / (qs + eps)))


def ref_softplus(x):
    return np.logaddexp(0.0, np.asarray(x, np.float64))


def ref_crd_scores(anchor, bank, pos, neg, tau):
    b, k = neg.shape
    out = np.zeros((b, k + 1))
    for i in range(b):
        for j, idx in enumerate([pos[i], *neg[i]]):
            out[i, j] = math.exp(float(np.dot(bank[idx], anchor[i])) / tau)
    return out


def ref_crd_nce(scores, z, n):
    eps = 1e-7
    x = np.asarray(scores, np.float64) / z
    m = x.shape[1] - 1
    pn = 1.0 / n
    out = []
    for row in x:
        val = math.log(row[0] / (row[0] + m * pn + eps))
        val += sum(math.log(m * pn / (v + m * pn + eps)) for v in row[1:])
        out.append(-val)
    return np.array(out)


def ref_crd_update(bank, idx, emb, momentum):
    new = np.array(bank, np.float64)
    for i, row in zip(idx, emb):
        v = momentum * new[i] + (1 - momentum) * row
        new[i] = v / np.linalg.norm(v)
    return new


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------- logits: references

LOGIT_SHAPES = [(5, 7), (2, 3, 11)]


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_divergences_match_reference(shape, tau):
    r = _rng(1)
    s, t = r.normal(size=shape) * 3, r.normal(size=shape) * 3
    sf, tf = s.astype(np.float32), t.astype(np.float32)
    _close(J.forward_kl(sf, tf, temperature=tau), ref_divergence("fkl", sf, tf, tau))
    _close(J.reverse_kl(sf, tf, temperature=tau), ref_divergence("rkl", sf, tf, tau))
    _close(J.tvd(sf, tf, temperature=tau), ref_divergence("tvd", sf, tf, tau))
    for beta in (0.1, 0.5, 0.9):
        _close(J.jsd(sf, tf, temperature=tau, beta=beta), ref_divergence("jsd", sf, tf, tau, beta))
    assert J.forward_kl(sf, tf).shape == shape[:-1]


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("standardize", [False, True])
def test_kd_matches_reference(shape, standardize):
    r = _rng(2)
    s = (r.normal(size=shape) * 2 + 1).astype(np.float32)
    t = (r.normal(size=shape) * 5).astype(np.float32)
    out = J.kd_loss(s, t, temperature=4.0, standardize=standardize)
    _close(out, ref_kd(s, t, 4.0, standardize), rtol=1e-4, atol=1e-5)
    _close(J.standardize_logits(s), ref_standardize(s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 9)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_reference(shape, eps):
    r = _rng(3)
    logits = (r.normal(size=shape) * 3).astype(np.float32)
    labels = r.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    _close(J.cross_entropy(logits, labels, label_smoothing=eps), ref_ce(logits, labels, eps))


@pytest.mark.parametrize("tau,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_reference(tau, alpha, beta):
    r = _rng(4)
    s = (r.normal(size=(6, 10)) * 3).astype(np.float32)
    t = (r.normal(size=(6, 10)) * 3).astype(np.float32)
    y = r.integers(0, 10, size=6).astype(np.int32)
    out = J.dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=tau)
    _close(out, ref_dkd(s, t, y, alpha, beta, tau), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- logits: hand-derived values


def test_hand_values_logits():
    x = np.array([[0.3, -1.2, 2.0, 0.0]], np.float32)
    for f in (J.forward_kl, J.reverse_kl, J.jsd, J.tvd, J.kd_loss):
        np.testing.assert_allclose(f(x, x), [0.0], atol=1e-6)
    # Disjoint one-hots (masked vocab): TVD = 1, JSD = log 2 (its upper bound), KL = inf.
    a = np.array([[0.0, -np.inf, -np.inf]], np.float32)
    b = np.array([[-np.inf, 0.0, -np.inf]], np.float32)
    np.testing.assert_allclose(J.tvd(a, b), [1.0], rtol=1e-6)
    np.testing.assert_allclose(J.jsd(a, b), [math.log(2)], rtol=1e-6)
    assert np.isinf(J.forward_kl(a, b)).all()
    # JSD bounded by log 2 on random logits; TVD in [0, 1].
    r = _rng(5)
    s, t = r.normal(size=(50, 6)) * 10, r.normal(size=(50, 6)) * 10
    assert np.all(np.asarray(J.jsd(s, t)) <= math.log(2) + 1e-6)
    assert np.all(np.asarray(J.tvd(s, t)) <= 1.0 + 1e-6)
    # CE of uniform logits = log C; with one-hot-ish certainty -> 0.
    np.testing.assert_allclose(
        J.cross_entropy(np.zeros((2, 5)), np.array([0, 3])), [math.log(5)] * 2, rtol=1e-6
    )
    # KD: tau^2 KL; student uniform, teacher softmax(z/2) = (2/3, 1/3) at tau=2, z=(2 log 2, 0).
    t2 = np.array([[2 * math.log(2), 0.0]], np.float32)
    expected = 4 * (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
    np.testing.assert_allclose(
        J.kd_loss(np.zeros((1, 2)), t2, temperature=2.0), [expected], rtol=1e-5
    )


def test_dkd_hand_derived_three_classes():
    zeros = np.zeros((1, 3), np.float32)
    label = np.array([0])
    # Teacher p = (1/2, 1/4, 1/4), student uniform: TCKD = KL((1/2,1/2)||(1/3,2/3)) =
    # 1/2 log(9/8), NCKD = 0 (both non-target parts uniform).
    t1 = np.array([[math.log(2), 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(
        J.dkd_loss(zeros, t1, label, alpha=1.0, beta=8.0, temperature=1.0),
        [0.5 * math.log(9 / 8)],
        rtol=1e-5,
    )
    # Teacher p = (2, 3, 1)/6: binary parts agree (1/3, 2/3) so TCKD = 0, NCKD =
    # KL((3/4, 1/4)||(1/2, 1/2)). At tau = 2 with logits doubled the distributions are the
    # same and the loss picks up tau^2 = 4.
    nckd = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    t2 = np.array([[math.log(2), math.log(3), 0.0]], np.float32)
    np.testing.assert_allclose(
        J.dkd_loss(zeros, t2, label, alpha=1.0, beta=8.0, temperature=1.0), [8 * nckd], rtol=1e-5
    )
    np.testing.assert_allclose(
        J.dkd_loss(zeros, 2 * t2, label, alpha=3.0, beta=2.0, temperature=2.0),
        [4 * 2 * nckd],
        rtol=1e-5,
    )


def test_masked_teacher_vocab_is_finite():
    """Teacher logits of -inf (masked vocab): finite values and gradients, 0 log 0 = 0."""
    r = _rng(6)
    s = r.normal(size=(2, 3, 8)).astype(np.float32)
    t = r.normal(size=(2, 3, 8)).astype(np.float32)
    t[..., 5:] = -np.inf
    fns = {
        "forward_kl": J.forward_kl,
        "jsd": J.jsd,
        "tvd": J.tvd,
        "kd": J.kd_loss,
        "dkd": lambda a, b: J.dkd_loss(a.reshape(6, 8), b.reshape(6, 8), np.zeros(6, np.int32)),
    }
    for name, f in fns.items():
        val, grad = jax.jit(jax.value_and_grad(lambda a, b, f=f: jnp.sum(f(a, b))))(s, t)
        assert np.isfinite(val) and np.isfinite(grad).all(), name
    _close(J.forward_kl(s, t), ref_divergence("fkl", s, t, 1.0), rtol=1e-4)
    _close(J.jsd(s, t, beta=0.3), ref_divergence("jsd", s, t, 1.0, 0.3), rtol=1e-4)
    # Reverse KL needs the student masked too (else it is +inf); then it stays finite.
    s_masked = np.where(np.isinf(t), -np.inf, s).astype(np.float32)
    val, grad = jax.value_and_grad(lambda a: jnp.sum(J.reverse_kl(a, t)))(s_masked)
    assert np.isfinite(val) and np.isfinite(grad).all()
    _close(J.reverse_kl(s_masked, t), ref_divergence("rkl", s_masked, t, 1.0), rtol=1e-4)


# ----------------------------------------------------------------- features: references


@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 4, 5)])
def test_hint_matches_reference(shape):
    r = _rng(7)
    s, t = r.normal(size=shape).astype(np.float32), r.normal(size=shape).astype(np.float32)
    _close(J.hint_loss(s, t), ref_hint(s, t))


@pytest.mark.parametrize("p", [2, 1.5])
def test_attention_transfer_matches_reference(p):
    r = _rng(8)
    s = r.normal(size=(3, 4, 5, 6)).astype(np.float32)
    t = r.normal(size=(3, 4, 5, 9)).astype(np.float32)
    _close(J.attention_transfer_loss(s, t, p=p), ref_at(s, t, p), atol=1e-7)


def test_similarity_preserving_matches_reference():
    r = _rng(9)
    s = r.normal(size=(5, 4, 4, 3)).astype(np.float32)
    t = r.normal(size=(5, 7)).astype(np.float32)
    out = J.similarity_preserving_loss(s, t)
    assert out.shape == ()
    _close(out, ref_sp(s, t))


@pytest.mark.parametrize("b,ds,dt", [(5, 8, 12), (3, 4, 4)])
def test_rkd_matches_reference(b, ds, dt):
    r = _rng(10)
    s, t = r.normal(size=(b, ds)).astype(np.float32), r.normal(size=(b, dt)).astype(np.float32)
    for wd, wa in [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)]:
        out = J.rkd_loss(s, t, distance_weight=wd, angle_weight=wa)
        assert out.shape == ()
        _close(out, ref_rkd(s, t, wd, wa), rtol=1e-4, atol=1e-5)


def test_pkt_matches_reference():
    r = _rng(11)
    s = r.normal(size=(6, 5)).astype(np.float32)
    t = r.normal(size=(6, 9)).astype(np.float32)
    out = J.pkt_loss(s, t)
    assert out.shape == ()
    _close(out, ref_pkt(s, t), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(J.pkt_loss(t, t), 0.0, atol=1e-7)


def test_adversarial_matches_reference():
    r = _rng(12)
    dt, ds = r.normal(size=(7, 1)) * 4, r.normal(size=(7,)) * 4
    out = J.discriminator_loss(dt.astype(np.float32), ds.astype(np.float32))
    assert out.shape == (7,)
    _close(out, ref_softplus(-dt[:, 0]) + ref_softplus(ds))
    _close(J.generator_loss(ds[:, None].astype(np.float32)), ref_softplus(-ds))
    # Hand values: a logit of 0 is p = 1/2 either way -> log 2 per term.
    np.testing.assert_allclose(
        J.discriminator_loss(np.zeros(2), np.zeros(2)), [2 * math.log(2)] * 2, rtol=1e-6
    )


def test_bfloat16_inputs_compute_in_float32():
    r = _rng(13)
    s = jnp.asarray(r.normal(size=(4, 6)), jnp.bfloat16)
    t = jnp.asarray(r.normal(size=(4, 6)), jnp.bfloat16)
    for out in (
        J.kd_loss(s, t),
        J.jsd(s, t),
        J.hint_loss(s, t),
        J.pkt_loss(s, t),
        J.generator_loss(s[:, 0]),
    ):
        assert out.dtype == jnp.float32
    _close(
        J.kd_loss(s, t),
        ref_kd(np.asarray(s, np.float64), np.asarray(t, np.float64), 4.0),
        rtol=1e-4,
        atol=1e-5,
    )


# ----------------------------------------------------------------- CRD


def test_crd_scores_loss_and_update():
    r = _rng(14)
    n, d, b, k = 40, 8, 5, 6
    bank = unit_rows(r.normal(size=(n, d))).astype(np.float32)
    anchor = unit_rows(r.normal(size=(b, d))).astype(np.float32)
    pos = r.choice(n, size=b, replace=False).astype(np.int32)
    neg = np.asarray(L.sample_negatives(jax.random.key(0), b, k, n, pos))
    scores = J.crd_scores(anchor, bank, pos, neg, temperature=0.5)
    assert scores.shape == (b, k + 1)
    ref_scores = ref_crd_scores(anchor, bank, pos, neg, 0.5)
    _close(scores, ref_scores, rtol=1e-5)
    z = J.crd_normalizer(scores, num_data=n)
    np.testing.assert_allclose(z, ref_scores.mean() * n, rtol=1e-5)
    loss = J.crd_nce_loss(scores, z, num_data=n)
    assert loss.shape == (b,)
    _close(loss, ref_crd_nce(ref_scores, ref_scores.mean() * n, n), rtol=1e-5)
    emb = unit_rows(r.normal(size=(b, d))).astype(np.float32)
    new = J.crd_update_bank(bank, pos, emb, momentum=0.3)
    _close(new, ref_crd_update(bank, pos, emb, 0.3), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(new), axis=1), 1.0, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(n), pos)
    np.testing.assert_array_equal(np.asarray(new)[untouched], bank[untouched])


def test_crd_nce_hand_value():
    # P_0 = K Pn (positive as likely as the noise mass), P_j = 0: -log(1/2) + 0.
    n, k = 10, 4
    scores = np.array([[k / n, 0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(J.crd_nce_loss(scores, 1.0, num_data=n), [math.log(2)], rtol=1e-5)


def test_sample_negatives():
    n, b, k = 7, 4, 500
    pos = np.array([0, 3, 6, 3], np.int32)
    neg = np.asarray(L.sample_negatives(jax.random.key(1), b, k, n, pos))
    assert neg.shape == (b, k) and neg.dtype == np.int32
    assert neg.min() >= 0 and neg.max() < n
    assert not np.any(neg == pos[:, None])
    for i in range(b):  # uniform over the other n - 1 indices
        counts = np.bincount(neg[i], minlength=n)
        assert np.all(np.delete(counts, pos[i]) > k / (n - 1) / 2)
    plain = np.asarray(L.sample_negatives(jax.random.key(2), b, k, n, None))
    assert plain.min() == 0 and plain.max() == n - 1


# ----------------------------------------------------------------- gradients (float64)


def _grad_cases():
    r = _rng(20)
    s, t = r.normal(size=(3, 5)), r.normal(size=(3, 5))
    y = np.array([0, 4, 2])
    f_s, f_t = r.normal(size=(2, 3, 3, 4)), r.normal(size=(2, 3, 3, 6))
    e_s, e_t = r.normal(size=(4, 5)), r.normal(size=(4, 3))
    bank = unit_rows(r.normal(size=(12, 5)))
    pos, neg = np.array([1, 5, 7]), r.integers(0, 12, size=(3, 4))
    return {
        "cross_entropy": (lambda a: L.cross_entropy(a, y, label_smoothing=0.1), s),
        "kd": (lambda a: L.kd_loss(a, t, temperature=2.0), s),
        "kd_standardized": (lambda a: L.kd_loss(a, t, standardize=True), s),
        "kd_teacher": (lambda b: L.kd_loss(s, b, temperature=2.0), t),
        "forward_kl": (lambda a: L.forward_kl(a, t, temperature=1.5), s),
        "reverse_kl": (lambda a: L.reverse_kl(a, t), s),
        "jsd": (lambda a: L.jsd(a, t, beta=0.3), s),
        "tvd": (lambda a: L.tvd(a, t), s),
        "dkd": (lambda a: L.dkd_loss(a, t, y), s),
        "hint": (lambda a: L.hint_loss(a, f_s), f_s + 0.3),
        "at": (lambda a: L.attention_transfer_loss(a, f_t), f_s),
        "sp": (lambda a: L.similarity_preserving_loss(a, f_t), f_s),
        "rkd": (lambda a: L.rkd_loss(a, e_t), e_s),
        "pkt": (lambda a: L.pkt_loss(a, e_t), e_s),
        "discriminator": (lambda a: L.discriminator_loss(a, -a[::-1] * 2), s[:, 0]),
        "generator": (lambda a: L.generator_loss(a), s[:, :1]),
        "crd": (
            lambda a: L.crd_nce_loss(L.crd_scores(a, bank, pos, neg, temperature=0.5), 3.0, 12),
            unit_rows(s),
        ),
    }


@pytest.mark.parametrize("name", list(_grad_cases()))
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        f, x = _grad_cases()[name]
        x = jnp.asarray(x, jnp.float64)
        assert f(x).dtype == jnp.float64  # float64 inputs stay float64 for this check
        check_grads(jax.jit(f), (x,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_rkd_teacher_side_is_stop_gradient():
    r = _rng(21)
    s, t = r.normal(size=(4, 3)), r.normal(size=(4, 5))
    g = jax.jit(jax.grad(L.rkd_loss, argnums=1))(s, jnp.asarray(t, jnp.float32))
    np.testing.assert_array_equal(g, 0.0)


def test_edge_case_gradients_are_finite():
    r = _rng(22)
    e = r.normal(size=(4, 5)).astype(np.float32)
    dup = e.copy()
    dup[1] = dup[0]  # two coinciding embeddings
    same = np.repeat(e[:1], 4, axis=0)  # all identical
    zero_rows = e.copy()
    zero_rows[2] = 0.0
    for f in (L.rkd_loss, L.pkt_loss, L.similarity_preserving_loss):
        value_and_grad = jax.jit(jax.value_and_grad(f))
        for s in (dup, same, zero_rows):
            for t in (e, s):
                val, g = value_and_grad(s, t)
                assert np.isfinite(val) and np.isfinite(g).all(), f.__name__
    _close(J.rkd_loss(dup, e), ref_rkd(dup, e, 25.0, 50.0), rtol=1e-4, atol=1e-5)
    _close(J.pkt_loss(dup, e), ref_pkt(dup, e), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(J.rkd_loss(same, same), 0.0, atol=1e-6)
    zeros = np.zeros((2, 3, 3, 4), np.float32)
    feats = r.normal(size=(2, 3, 3, 6)).astype(np.float32)
    partly = feats[..., :4].copy()
    partly[0] = 0.0
    for f in (L.attention_transfer_loss, L.similarity_preserving_loss):
        value_and_grad = jax.jit(jax.value_and_grad(lambda a, b, f=f: jnp.sum(f(a, b))))
        for s in (zeros, partly):
            for t in (feats, np.zeros_like(feats)):
                val, g = value_and_grad(s, t)
                assert np.isfinite(val) and np.isfinite(g).all(), f.__name__
    _close(J.attention_transfer_loss(partly, feats), ref_at(partly, feats, 2), atol=1e-7)
    _close(J.similarity_preserving_loss(partly, feats), ref_sp(partly, feats))


# ----------------------------------------------------------------- errors


ERROR_CASES = [
    (
        "kd temperature",
        lambda: L.kd_loss(np.zeros((2, 3)), np.zeros((2, 3)), temperature=0.0),
        r"temperature must be > 0, got 0\.0",
    ),
    (
        "fkl temperature",
        lambda: L.forward_kl(np.zeros((2, 3)), np.zeros((2, 3)), temperature=-1),
        "temperature",
    ),
    (
        "kd shapes",
        lambda: L.kd_loss(np.zeros((2, 3)), np.zeros((2, 4))),
        r"student_logits\.shape=\(2, 3\) and teacher_logits\.shape=\(2, 4\)",
    ),
    ("tvd shapes", lambda: L.tvd(np.zeros((2, 3)), np.zeros((3, 3))), r"\(2, 3\).*\(3, 3\)"),
    (
        "jsd beta 0",
        lambda: L.jsd(np.zeros((2, 3)), np.zeros((2, 3)), beta=0.0),
        r"beta must be in \(0\.0, 1\.0\), got 0\.0",
    ),
    ("jsd beta 1", lambda: L.jsd(np.zeros((2, 3)), np.zeros((2, 3)), beta=1.0), "beta"),
    (
        "ce labels shape",
        lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(3, np.int32)),
        r"labels\.shape=\(3,\) and logits\.shape=\(2, 3\)",
    ),
    ("ce labels dtype", lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(2)), "integer"),
    (
        "ce smoothing",
        lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int32), label_smoothing=1.0),
        "label_smoothing",
    ),
    (
        "dkd classes",
        lambda: L.dkd_loss(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2, int)),
        "at least 2",
    ),
    (
        "dkd temperature",
        lambda: L.dkd_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2, int), temperature=0),
        "temperature",
    ),
    (
        "standardize 1 class",
        lambda: L.kd_loss(np.zeros((2, 1)), np.zeros((2, 1)), standardize=True),
        "at least 2 classes",
    ),
    (
        "hint shapes",
        lambda: L.hint_loss(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 5))),
        r"student_features\.shape=\(2, 4, 4, 3\) and teacher_features\.shape=\(2, 4, 4, 5\)",
    ),
    (
        "at spatial",
        lambda: L.attention_transfer_loss(np.zeros((2, 4, 4, 3)), np.zeros((2, 2, 2, 3))),
        r"\(2, 4, 4, 3\).*\(2, 2, 2, 3\)",
    ),
    (
        "at rank",
        lambda: L.attention_transfer_loss(np.zeros((2, 4, 3)), np.zeros((2, 4, 3))),
        "NHWC",
    ),
    (
        "sp batch",
        lambda: L.similarity_preserving_loss(np.zeros((2, 4)), np.zeros((3, 4))),
        r"batch size.*\(2, 4\).*\(3, 4\)",
    ),
    ("rkd batch", lambda: L.rkd_loss(np.zeros((1, 4)), np.zeros((1, 4))), "at least 2"),
    ("pkt batch", lambda: L.pkt_loss(np.zeros((2, 4)), np.zeros((3, 4))), "batch size"),
    (
        "disc scores",
        lambda: L.discriminator_loss(np.zeros((2, 2)), np.zeros(2)),
        r"teacher_scores.*\[B, 1\].*\(2, 2\)",
    ),
    ("disc batch", lambda: L.discriminator_loss(np.zeros(2), np.zeros(3)), r"\(2,\).*\(3,\)"),
    (
        "crd width",
        lambda: L.crd_scores(
            np.zeros((2, 4)), np.zeros((9, 5)), np.zeros(2, int), np.zeros((2, 3), int)
        ),
        r"\(2, 4\).*\(9, 5\)",
    ),
    (
        "crd pos",
        lambda: L.crd_scores(
            np.zeros((2, 4)), np.zeros((9, 4)), np.zeros(3, int), np.zeros((2, 3), int)
        ),
        r"pos_indices.*\(2,\)",
    ),
    (
        "crd temperature",
        lambda: L.crd_scores(
            np.zeros((2, 4)),
            np.zeros((9, 4)),
            np.zeros(2, int),
            np.zeros((2, 3), int),
            temperature=0.0,
        ),
        "temperature",
    ),
    ("nce scores", lambda: L.crd_nce_loss(np.ones((2, 1)), 1.0, 10), r"K >= 1.*\(2, 1\)"),
    ("nce num_data", lambda: L.crd_nce_loss(np.ones((2, 3)), 1.0, 0), "num_data"),
    (
        "bank momentum",
        lambda: L.crd_update_bank(
            np.zeros((9, 4)), np.zeros(2, int), np.zeros((2, 4)), momentum=1.5
        ),
        "momentum",
    ),
    (
        "bank width",
        lambda: L.crd_update_bank(np.zeros((9, 4)), np.zeros(2, int), np.zeros((2, 3))),
        r"\(9, 4\).*\(2, 3\)",
    ),
    ("negatives", lambda: L.sample_negatives(jax.random.key(0), 2, 0, 10, None), "num_negatives"),
]


@pytest.mark.parametrize("name,fn,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_invalid_arguments_raise(name, fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_validation_runs_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="temperature"):
        jax.jit(functools.partial(L.kd_loss, temperature=0.0))(np.zeros((2, 3)), np.zeros((2, 3)))
    # A traced temperature (e.g. a schedule) cannot be checked and is accepted.
    out = jax.jit(L.kd_loss)(np.zeros((2, 3)), np.ones((2, 3)), 2.0)
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


# ----------------------------------------------------------------- tracing


def _traced_once(f, make_args):
    count = 0

    def counted(*args):
        nonlocal count
        count += 1
        return f(*args)

    jitted = jax.jit(counted)
    for seed in range(3):
        jax.block_until_ready(jitted(*make_args(_rng(seed))))
    return count


def _logit_pair(r):
    return r.normal(size=(4, 6)).astype(np.float32), r.normal(size=(4, 6)).astype(np.float32)


TRACE_CASES = {
    "kd": (functools.partial(L.kd_loss, temperature=3.0), _logit_pair),
    "jsd": (functools.partial(L.jsd, beta=0.2), _logit_pair),
    "dkd": (lambda s, t: L.dkd_loss(s, t, jnp.arange(4)), _logit_pair),
    "at": (
        L.attention_transfer_loss,
        lambda r: (
            r.normal(size=(2, 3, 3, 4)).astype(np.float32),
            r.normal(size=(2, 3, 3, 5)).astype(np.float32),
        ),
    ),
    "rkd": (L.rkd_loss, _logit_pair),
    "crd": (
        lambda a, b: L.crd_nce_loss(
            L.crd_scores(a, b, jnp.arange(4), jnp.ones((4, 3), int)), 2.0, 6
        ),
        _logit_pair,
    ),
}


@pytest.mark.parametrize("name", list(TRACE_CASES))
def test_jit_traces_once(name):
    f, make_args = TRACE_CASES[name]
    assert _traced_once(f, make_args) == 1
