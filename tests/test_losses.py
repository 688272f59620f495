"""Loss library: float64 NumPy references, hand-derived values, gradients, errors, tracing;
and the terms whose recipe the reference code fixes (DKD + logit standardisation, AT over
stage pairs of different sizes, CRD's memory and other-class negatives).

The references below are written independently of the library (loops and plain NumPy in
float64); the library computes in float32, hence the tolerances.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from refusals import refusal

from jaxdistill import losses as L
from jaxdistill import terms
from jaxdistill.objective import Objective, Term, build_objective
from jaxdistill.terms import Views

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


def ref_dkd_official(s, t, y, alpha, beta, tau, logit_stand=False):
    """`dkd_loss` of Sun et al.'s mdistiller fork (mdistiller/distillers/DKD.py), transcribed
    in float64: normalize (unbiased std, + 1e-7) when logit_stand, then / tau, the gt mask from
    the labels, TCKD on cat_mask'ed probabilities, NCKD with 1000 subtracted from the target
    entry, kl_div(size_average=False) / B. A batch scalar (as torch returns it)."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    if logit_stand:
        s, t = ref_standardize(s), ref_standardize(t)
    gt = np.zeros_like(s)
    gt[np.arange(len(y)), y] = 1.0

    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    softmax = lambda x: np.exp(log_softmax(x))

    def kl_div(log_q, p):  # torch: sum p (log p - log q), 0 where p == 0
        safe = np.where(p > 0, p, 1.0)
        return np.sum(np.where(p > 0, safe * (np.log(safe) - log_q), 0.0))

    ps, pt = softmax(s / tau), softmax(t / tau)
    cat = lambda p: np.stack([(p * gt).sum(1), (p * (1 - gt)).sum(1)], axis=1)
    tckd = kl_div(np.log(cat(ps)), cat(pt)) * tau**2 / len(y)
    pt2 = softmax(t / tau - 1000.0 * gt)  # exp(-1000) is 0 in float64: the target drops out
    nckd = kl_div(log_softmax(s / tau - 1000.0 * gt), pt2) * tau**2 / len(y)
    return alpha * tckd + beta * nckd


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


def ref_adaptive_avg_pool(f, out_h, out_w):
    """torch.nn.functional.adaptive_avg_pool2d on NHWC, by its bin formula:
    [floor(i * H / out), ceil((i + 1) * H / out)) per output row (and column)."""
    f = np.asarray(f, np.float64)
    b, h, w, c = f.shape
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            out[:, i, j] = f[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def ref_at_official(f_s, f_t, p=2):
    """RepDistiller `Attention.at_loss` / mdistiller `single_stage_at_loss`, transcribed for
    NHWC (square maps): the larger map pooled to (H, H) of the smaller, then
    (at(f_s) - at(f_t)).pow(2).mean(), at(f) = normalize(f.pow(p).mean(channels)). A scalar."""
    s_h, t_h = f_s.shape[1], f_t.shape[1]
    if s_h > t_h:
        f_s = ref_adaptive_avg_pool(f_s, t_h, t_h)
    elif s_h < t_h:
        f_t = ref_adaptive_avg_pool(f_t, s_h, s_h)
    return float(np.mean((ref_at_map(f_s, p) - ref_at_map(f_t, p)) ** 2))


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


def ref_crd_official(f_s, f_t, memory_s, memory_t, idx, contrast_idx, z_s, z_t, n, tau, m):
    """RepDistiller `ContrastMemory.forward` + two `ContrastLoss`es (crd/memory.py,
    crd/criterion.py) in float64, on already embedded f_s, f_t [B, D] and the sample indices
    [B, K+1] (column 0 the positive). Z < 0 is set from this batch. Returns (loss, new
    memory_s, new memory_t, Z_s, Z_t)."""
    f_s, f_t = np.asarray(f_s, np.float64), np.asarray(f_t, np.float64)
    mem_s, mem_t = np.array(memory_s, np.float64), np.array(memory_t, np.float64)
    out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast_idx], f_t) / tau)  # teacher anchor
    out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast_idx], f_s) / tau)  # student anchor
    z_s = out_s.mean() * n if z_s < 0 else z_s
    z_t = out_t.mean() * n if z_t < 0 else z_t

    def contrast_loss(x):
        bsz, k = x.shape[0], x.shape[1] - 1
        pn, eps = 1.0 / n, 1e-7
        log_d1 = np.log(x[:, 0] / (x[:, 0] + k * pn + eps))
        log_d0 = np.log((k * pn) / (x[:, 1:] + k * pn + eps))
        return -(log_d1.sum() + log_d0.sum()) / bsz

    loss = contrast_loss(out_s / z_s) + contrast_loss(out_t / z_t)
    for mem, f in ((mem_s, f_s), (mem_t, f_t)):
        pos = mem[idx] * m + f * (1 - m)
        mem[idx] = pos / np.sqrt((pos**2).sum(1, keepdims=True))
    return loss, mem_s, mem_t, z_s, z_t


def ref_cls_negative(split_labels, num_classes):
    """`CIFAR100InstanceSample.cls_negative`: per class, every example of the other classes."""
    cls_positive = [[i for i, y in enumerate(split_labels) if y == c] for c in range(num_classes)]
    return [sorted(i for j in range(num_classes) if j != c for i in cls_positive[j])
            for c in range(num_classes)]


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


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("tau,alpha,beta", [(4.0, 1.0, 8.0), (2.0, 9.0, 72.0)])
def test_dkd_matches_official_code(standardize, tau, alpha, beta):
    """The batch mean of `dkd_loss` is Sun et al.'s `dkd_loss(..., logit_stand)` (their fork
    of mdistiller: logits z-scored first, then / tau, the target mask from the labels)."""
    r = _rng(40)
    s = (r.normal(size=(8, 10)) * 3 + 1).astype(np.float32)
    t = (r.normal(size=(8, 10)) * 6).astype(np.float32)
    y = r.integers(0, 10, size=8).astype(np.int32)
    out = J.dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=tau, standardize=standardize)
    assert out.shape == (8,)
    _close(np.mean(out), ref_dkd_official(s, t, y, alpha, beta, tau, standardize), rtol=1e-4)
    if standardize:  # per example: DKD of the standardised logits
        _close(out, ref_dkd(ref_standardize(s), ref_standardize(t), y, alpha, beta, tau),
               rtol=1e-4, atol=1e-5)
        # invariant to each vector's shift and (positive) scale, as the z-score is
        moved = J.dkd_loss(s * 3 + 5, t * 0.5 - 2, y, alpha=alpha, beta=beta, temperature=tau,
                           standardize=True)
        _close(moved, np.asarray(out, np.float64), rtol=1e-3, atol=1e-5)


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


@pytest.mark.parametrize("hw_in,hw_out", [((8, 8), (4, 4)), ((7, 7), (3, 3)), ((5, 7), (2, 3)),
                                          ((6, 4), (6, 1)), ((3, 3), (3, 3))])
def test_adaptive_avg_pool_matches_torch_bins(hw_in, hw_out):
    r = _rng(41)
    f = r.normal(size=(2, *hw_in, 3)).astype(np.float32)
    out = J.adaptive_avg_pool(f, size=hw_out)
    assert out.shape == (2, *hw_out, 3)
    _close(out, ref_adaptive_avg_pool(f, *hw_out), atol=1e-6)
    # 3 -> 2 bins overlap: [0, 2) and [1, 3)
    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(np.asarray(J.adaptive_avg_pool(x, size=(2, 1)))[0, :, 0, 0],
                               [0.5, 1.5])


@pytest.mark.parametrize("s_hw,t_hw", [((8, 8), (4, 4)), ((4, 4), (8, 8)), ((7, 7), (3, 3)),
                                       ((5, 5), (5, 5))])
@pytest.mark.parametrize("p", [2, 1.5])
def test_attention_transfer_pools_like_the_reference(s_hw, t_hw, p):
    """Maps of different sizes: the larger feature map is average-pooled to the smaller
    (RepDistiller `Attention.at_loss`, mdistiller `single_stage_at_loss`); the batch mean
    is the reference's `.mean()`. Features post-ReLU as the references feed them (their
    f.pow(p) is |f|^p there), signed too for p = 2."""
    r = _rng(42)
    s = r.normal(size=(3, *s_hw, 4)).astype(np.float32)
    s = s if p == 2 else np.maximum(s, 0.0)
    t = np.maximum(r.normal(size=(3, *t_hw, 6)), 0.0).astype(np.float32)
    out = J.attention_transfer_loss(s, t, p=p)
    assert out.shape == (3,)
    _close(np.mean(out), ref_at_official(s, t, p), rtol=1e-4, atol=1e-8)


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


def test_crd_bank_init_is_the_reference_uniform():
    """ContrastMemory: rand(N, D) * 2 stdv - stdv, stdv = 1 / sqrt(D / 3), rows not normalised."""
    n, d = 3000, 12
    bank = np.asarray(L.crd_init_bank(jax.random.key(3), n, d))
    stdv = 1.0 / math.sqrt(d / 3)
    assert bank.shape == (n, d) and bank.dtype == np.float32
    assert bank.min() >= -stdv and bank.max() <= stdv
    assert bank.min() < -0.95 * stdv and bank.max() > 0.95 * stdv
    norms = np.linalg.norm(bank, axis=1)
    assert norms.std() > 0.05  # not normalised rows
    np.testing.assert_allclose(np.mean(norms**2), 1.0, rtol=0.03)  # E||row||^2 = d stdv^2 / 3
    np.testing.assert_allclose(np.mean(bank), 0.0, atol=0.01)


def test_other_class_negatives_are_the_reference_pool_without_replacement():
    """CIFAR100InstanceSample ('exact'): each row draws K distinct examples of
    cls_negative[label], uniformly."""
    r = _rng(43)
    n, c, k = 60, 4, 12
    split_labels = r.integers(0, c, size=n).astype(np.int32)
    pools = ref_cls_negative(split_labels, c)
    assert L.max_other_class_negatives(split_labels) == min(len(p) for p in pools)
    labels = np.array([0, 1, 2, 3, 1, 0], np.int32)
    sample = jax.jit(L.sample_other_class_negatives, static_argnums=3)
    counts = np.zeros((len(labels), n))
    draws = 300
    for i in range(draws):
        neg = np.asarray(sample(jax.random.key(i), labels, split_labels, k))
        assert neg.shape == (len(labels), k) and neg.dtype == np.int32
        for row, y in zip(neg, labels):
            assert len(set(row.tolist())) == k  # without replacement
            assert set(row.tolist()) <= set(pools[y])  # other classes only
        np.add.at(counts, (np.arange(len(labels))[:, None], neg), 1)
    for i, y in enumerate(labels):  # each pool member drawn with probability K / |pool|
        expected = draws * k / len(pools[y])
        member = np.isin(np.arange(n), pools[y])
        assert np.all(counts[i, ~member] == 0)
        assert np.all(np.abs(counts[i, member] - expected) < 5 * math.sqrt(expected))
    # K = the smallest pool: that row is a permutation of its whole pool
    smallest = int(np.argmin([len(p) for p in pools]))
    full = np.asarray(sample(jax.random.key(0), np.array([smallest], np.int32), split_labels,
                             len(pools[smallest])))
    assert sorted(full[0].tolist()) == pools[smallest]


def _crd_views(r, b, n, c):
    labels = r.integers(0, c, size=b).astype(np.int32)
    s = jnp.asarray(r.normal(size=(b, 6)), jnp.float32)
    t = jnp.asarray(r.normal(size=(b, 9)), jnp.float32)
    idx = jnp.asarray(r.choice(n, size=b, replace=False), jnp.int32)
    return Views(jnp.zeros((b, c)), {"embedding": s}, jnp.zeros((b, c)), {"embedding": t},
                 jnp.asarray(labels), idx)


def test_crd_term_matches_the_reference_with_other_class_negatives():
    """The `crd` term on the split's labels: negatives from other classes, banks initialised
    as ContrastMemory, value and bank updates equal to RepDistiller's CRDLoss forward in
    float64 on the same embeddings and sample indices (two steps: Z set, then kept)."""
    r = _rng(44)
    b, n, c, k, dim, tau, m = 8, 50, 3, 10, 16, 0.1, 0.5
    split_labels = r.integers(0, c, size=n).astype(np.int32)
    views = _crd_views(r, b, n, c)
    split_labels[np.asarray(views.indices)] = np.asarray(views.labels)
    hp = {"dim": dim, "num_negatives": k, "temperature": tau, "momentum": m}
    heads, state = terms.make_crd(views, nnx.Rngs(0), n, **hp, split_labels=split_labels)
    assert set(state) == {"student_bank", "teacher_bank", "student_z", "teacher_z",
                          "split_labels"}
    np.testing.assert_array_equal(state["split_labels"], split_labels)
    stdv = 1.0 / math.sqrt(dim / 3)
    for bank in (state["student_bank"], state["teacher_bank"]):
        assert np.abs(np.asarray(bank)).max() <= stdv
        assert np.linalg.norm(np.asarray(bank), axis=1).std() > 0.01  # not normalised
    f_s = np.asarray(heads["student"](views.student_features["embedding"]))
    f_t = np.asarray(heads["teacher"](views.teacher_features["embedding"]))
    mem_s, mem_t, z_s, z_t = state["student_bank"], state["teacher_bank"], -1.0, -1.0
    pools = ref_cls_negative(split_labels, c)
    for step in range(2):
        rng = jax.random.key(10 + step)
        out = terms.crd(views, **hp, aux=terms.AuxIO(heads, state, rng, n))
        neg = np.asarray(L.sample_other_class_negatives(rng, views.labels, split_labels, k))
        for row, y in zip(neg, np.asarray(views.labels)):
            assert set(row.tolist()) <= set(pools[y]) and len(set(row.tolist())) == k
        contrast_idx = np.concatenate([np.asarray(views.indices)[:, None], neg], axis=1)
        loss, mem_s, mem_t, z_s, z_t = ref_crd_official(
            f_s, f_t, mem_s, mem_t, np.asarray(views.indices), contrast_idx, z_s, z_t, n, tau, m)
        _close(np.mean(out.value), loss, rtol=1e-4)
        state = out.state
        _close(state["student_bank"], mem_s, atol=1e-6)
        _close(state["teacher_bank"], mem_t, atol=1e-6)
        _close(state["student_z"], z_s, rtol=1e-5)
        _close(state["teacher_z"], z_t, rtol=1e-5)
        np.testing.assert_array_equal(state["split_labels"], split_labels)


def test_crd_negatives_options():
    r = _rng(45)
    b, n, c = 4, 30, 3
    views = _crd_views(r, b, n, c)
    split_labels = r.integers(0, c, size=n).astype(np.int32)
    make = functools.partial(terms.make_crd, views, nnx.Rngs(0), n, dim=8, num_negatives=5)
    # 'auto': other classes when the split's labels are given, else uniform (no label table)
    assert "split_labels" in make(split_labels=split_labels)[1]
    assert "split_labels" not in make()[1]
    assert "split_labels" not in make(negatives="uniform", split_labels=split_labels)[1]
    heads, state = make(negatives="uniform")
    out = terms.crd(views, dim=8, num_negatives=5, negatives="uniform",
                    aux=terms.AuxIO(heads, state, jax.random.key(0), n))
    assert out.value.shape == (b,) and set(out.state) == set(state)
    with pytest.raises(ValueError) as e:
        make(negatives="other_class")
    assert str(e.value) == ("negatives='other_class' needs the training split's labels, which "
                            "this run does not provide; use negatives='uniform' (or 'auto')")
    with pytest.raises(ValueError) as e:
        make(negatives="others")
    assert str(e.value) == (
        "negatives must be one of ('auto', 'other_class', 'uniform'), got 'others'")
    most = L.max_other_class_negatives(split_labels)
    with pytest.raises(ValueError) as e:
        terms.make_crd(views, nnx.Rngs(0), n, dim=8, num_negatives=most + 1,
                       split_labels=split_labels)
    assert str(e.value) == (
        f"num_negatives={most + 1} exceeds the {most} examples outside the largest class, the "
        "most that negatives='other_class' can draw without replacement; use fewer or "
        "negatives='uniform'")
    with pytest.raises(ValueError) as e:
        make(split_labels=split_labels[:-1])
    assert str(e.value) == (
        "split_labels must hold one label per training example (30), got shape (29,)")
    # through the objective: a term whose make_aux is given the split's labels
    spec = dataclasses.replace(terms.TERMS["crd"],
                               make_aux=functools.partial(terms.make_crd, split_labels=split_labels))
    objective = Objective((Term("crd", spec, 0.8, 0, (("dim", 8), ("num_negatives", 5))),))
    objective = objective.bind(views, num_data=n)
    params, aux_state = objective.init_aux(views, jax.random.key(1))
    total, values, new_state = objective(views, jnp.int32(0), params, aux_state,
                                         jax.random.key(2))
    assert np.isfinite(total) and "split_labels" in new_state["crd"]
    np.testing.assert_allclose(total, 0.8 * values["crd"], rtol=1e-6)


# ----------------------------------------------------------------- terms: AT over stage pairs


def test_at_term_sums_stage_pairs_of_different_sizes():
    """One `at` term over three stage pairs (the teacher's maps twice the student's size for
    two of them) is the reference's sum of per-stage losses (mdistiller `at_loss`), with the
    stage names checked against the models; the single-name form still works."""
    r = _rng(46)
    b = 4
    s_feats = {f"stage{i}": jnp.asarray(np.abs(r.normal(size=(b, hw, hw, 3))), jnp.float32)
               for i, hw in ((1, 8), (2, 4), (3, 2))}
    t_feats = {f"stage{i}": jnp.asarray(np.abs(r.normal(size=(b, hw, hw, 5))), jnp.float32)
               for i, hw in ((1, 16), (2, 8), (3, 2))}
    views = Views(jnp.zeros((b, 3)), s_feats, jnp.zeros((b, 3)), t_feats,
                  jnp.zeros(b, jnp.int32), teachers={"teacher": (jnp.zeros((b, 3)), t_feats)})
    names = ("stage1", "stage2", "stage3")
    objective = build_objective({"at": {"weight": 1000.0, "student_feature": list(names),
                                        "teacher_feature": names}}, has_teacher=True)
    objective.check_models(views)
    total, values, _ = objective(views, jnp.int32(0))
    expected = sum(ref_at_official(np.asarray(s_feats[k]), np.asarray(t_feats[k])) for k in names)
    _close(values["at"], expected, rtol=1e-4)
    np.testing.assert_allclose(total, 1000.0 * values["at"], rtol=1e-6)
    single = build_objective({"at": {"student_feature": "stage2", "teacher_feature": "stage2"}},
                             has_teacher=True)
    _close(single(views, jnp.int32(0))[1]["at"],
           ref_at_official(np.asarray(s_feats["stage2"]), np.asarray(t_feats["stage2"])),
           rtol=1e-4)
    missing = build_objective({"at": {"student_feature": ("stage1", "stage9"),
                                      "teacher_feature": ("stage1", "stage2")}}, has_teacher=True)
    with pytest.raises(ValueError) as e:
        missing.check_models(views)
    assert str(e.value) == ("config.objective.at.student_feature: the student model has no "
                            "feature 'stage9'; it has ['stage1', 'stage2', 'stage3']")
    uneven = build_objective({"at": {"student_feature": ("stage1", "stage2"),
                                     "teacher_feature": "stage2"}}, has_teacher=True)
    with pytest.raises(ValueError) as e:
        uneven(views, jnp.int32(0))
    assert str(e.value) == (
        "config.objective.at: student_feature ('stage1', 'stage2') and teacher_feature 'stage2' "
        "must be one name each or as many names each")


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
        "dkd_standardized": (lambda a: L.dkd_loss(a, t, y, standardize=True), s),
        "hint": (lambda a: L.hint_loss(a, f_s), f_s + 0.3),
        "at": (lambda a: L.attention_transfer_loss(a, f_t), f_s),
        "at_pooled": (lambda a: L.attention_transfer_loss(a, f_t[:, :2, :2]), f_s),
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
        "temperature must be > 0, got 0.0",
    ),
    (
        "fkl temperature",
        lambda: L.forward_kl(np.zeros((2, 3)), np.zeros((2, 3)), temperature=-1),
        "temperature must be > 0, got -1",
    ),
    (
        "kd shapes",
        lambda: L.kd_loss(np.zeros((2, 3)), np.zeros((2, 4))),
        ("student_logits and teacher_logits must have the same shape, got "
         "student_logits.shape=(2, 3) and teacher_logits.shape=(2, 4)"),
    ),
    ("tvd shapes", lambda: L.tvd(np.zeros((2, 3)), np.zeros((3, 3))), (
        "student_logits and teacher_logits must have the same shape, got "
        "student_logits.shape=(2, 3) and teacher_logits.shape=(3, 3)")),
    (
        "jsd beta 0",
        lambda: L.jsd(np.zeros((2, 3)), np.zeros((2, 3)), beta=0.0),
        "beta must be in (0.0, 1.0), got 0.0",
    ),
    ("jsd beta 1", lambda: L.jsd(np.zeros((2, 3)), np.zeros((2, 3)), beta=1.0), (
        "beta must be in (0.0, 1.0), got 1.0")),
    (
        "ce labels shape",
        lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(3, np.int32)),
        "labels.shape must equal logits.shape[:-1], got labels.shape=(3,) and logits.shape=(2, 3)",
    ),
    ("ce labels dtype", lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(2)), (
        "labels must be integer class ids, got dtype float32")),
    (
        "ce smoothing",
        lambda: L.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int32), label_smoothing=1.0),
        "label_smoothing must be in [0.0, 1.0), got 1.0",
    ),
    (
        "dkd classes",
        lambda: L.dkd_loss(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2, int)),
        "student_logits need at least 2 classes on the last axis, got student_logits.shape=(2, 1)",
    ),
    (
        "dkd temperature",
        lambda: L.dkd_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2, int), temperature=0),
        "temperature must be > 0, got 0",
    ),
    (
        "standardize 1 class",
        lambda: L.kd_loss(np.zeros((2, 1)), np.zeros((2, 1)), standardize=True),
        "standardize needs at least 2 classes, got logits.shape=(2, 1)",
    ),
    (
        "hint shapes",
        lambda: L.hint_loss(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 5))),
        ("student_features and teacher_features must have the same shape (with a batch axis), "
         "got student_features.shape=(2, 4, 4, 3) and teacher_features.shape=(2, 4, 4, 5)"),
    ),
    (
        "at spatial",
        lambda: L.attention_transfer_loss(np.zeros((2, 4, 2, 3)), np.zeros((2, 2, 4, 3))),
        ("attention transfer pools the larger feature map to the smaller one, but neither is at "
         "least as large in both axes: student_features.shape=(2, 4, 2, 3) and "
         "teacher_features.shape=(2, 2, 4, 3)"),
    ),
    (
        "at batch",
        lambda: L.attention_transfer_loss(np.zeros((2, 4, 4, 3)), np.zeros((3, 2, 2, 3))),
        ("student_features and teacher_features must be NHWC with equal batch sizes, got "
         "student_features.shape=(2, 4, 4, 3) and teacher_features.shape=(3, 2, 2, 3)"),
    ),
    (
        "pool size",
        lambda: L.adaptive_avg_pool(np.zeros((2, 4, 4, 3)), (5, 2)),
        ("adaptive_avg_pool takes NHWC features and an output size no larger than theirs, got "
         "features.shape=(2, 4, 4, 3) and size=(5, 2)"),
    ),
    (
        "at rank",
        lambda: L.attention_transfer_loss(np.zeros((2, 4, 3)), np.zeros((2, 4, 3))),
        ("student_features and teacher_features must be NHWC with equal batch sizes, got "
         "student_features.shape=(2, 4, 3) and teacher_features.shape=(2, 4, 3)"),
    ),
    (
        "sp batch",
        lambda: L.similarity_preserving_loss(np.zeros((2, 4)), np.zeros((3, 4))),
        ("student_features and teacher_features must share the batch size (axis 0), got "
         "student_features.shape=(2, 4) and teacher_features.shape=(3, 4)"),
    ),
    ("rkd batch", lambda: L.rkd_loss(np.zeros((1, 4)), np.zeros((1, 4))), (
        "student_embeddings needs a batch of at least 2, got shape (1, 4)")),
    ("pkt batch", lambda: L.pkt_loss(np.zeros((2, 4)), np.zeros((3, 4))), (
        "student_embeddings and teacher_embeddings must share the batch size (axis 0), got "
        "student_embeddings.shape=(2, 4) and teacher_embeddings.shape=(3, 4)")),
    (
        "disc scores",
        lambda: L.discriminator_loss(np.zeros((2, 2)), np.zeros(2)),
        "teacher_scores must have shape [B] or [B, 1], got teacher_scores.shape=(2, 2)",
    ),
    ("disc batch", lambda: L.discriminator_loss(np.zeros(2), np.zeros(3)), (
        "teacher_scores and student_scores must have the same batch size, got "
        "teacher_scores.shape=(2,) and student_scores.shape=(3,)")),
    (
        "crd width",
        lambda: L.crd_scores(
            np.zeros((2, 4)), np.zeros((9, 5)), np.zeros(2, int), np.zeros((2, 3), int)
        ),
        ("anchor [B, D] and bank [N, D] must be 2-D with the same width, got anchor.shape=(2, "
         "4) and bank.shape=(9, 5)"),
    ),
    (
        "crd pos",
        lambda: L.crd_scores(
            np.zeros((2, 4)), np.zeros((9, 4)), np.zeros(3, int), np.zeros((2, 3), int)
        ),
        "pos_indices must have shape (2,), got pos_indices.shape=(3,)",
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
        "temperature must be > 0, got 0.0",
    ),
    ("nce scores", lambda: L.crd_nce_loss(np.ones((2, 1)), 1.0, 10), (
        "scores must be [B, K+1] with K >= 1, got scores.shape=(2, 1)")),
    ("nce num_data", lambda: L.crd_nce_loss(np.ones((2, 3)), 1.0, 0), (
        "num_data must be a positive Python int, got 0")),
    (
        "bank momentum",
        lambda: L.crd_update_bank(
            np.zeros((9, 4)), np.zeros(2, int), np.zeros((2, 4)), momentum=1.5
        ),
        "momentum must be in [0.0, 1.0], got 1.5",
    ),
    (
        "bank width",
        lambda: L.crd_update_bank(np.zeros((9, 4)), np.zeros(2, int), np.zeros((2, 3))),
        ("bank [N, D] and embeddings [B, D] must be 2-D with the same width, got bank.shape=(9, "
         "4) and embeddings.shape=(2, 3)"),
    ),
    ("negatives", lambda: L.sample_negatives(jax.random.key(0), 2, 0, 10, None), (
        "num_negatives must be a positive Python int, got 0")),
    (
        "other-class pool",
        lambda: L.sample_other_class_negatives(
            jax.random.key(0), np.zeros(2, np.int32), np.array([0, 0, 1, 1, 2], np.int32), 4
        ),
        ("num_negatives=4 exceeds the 3 examples of other classes than the largest class of the "
         "split"),
    ),
    (
        "other-class labels",
        lambda: L.sample_other_class_negatives(
            jax.random.key(0), np.zeros(2), np.zeros(5, np.int32), 2
        ),
        "labels must be integer indices, got dtype float32",
    ),
    ("bank dim", lambda: L.crd_init_bank(jax.random.key(0), 10, 0), (
        "dim must be a positive Python int, got 0")),
]


@pytest.mark.parametrize("name,fn,message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_invalid_arguments_raise(name, fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert str(e.value) == message


def test_validation_runs_at_trace_time_under_jit():
    kd = jax.jit(functools.partial(L.kd_loss, temperature=0.0))
    assert refusal(lambda: kd(np.zeros((2, 3)), np.zeros((2, 3)))) == ("temperature must be > "
                                                                       "0, got 0.0")
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
