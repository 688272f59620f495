"""The objective: validation of config terms, and the weighted sum against NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest
from refusals import refusal

from jaxdistill.objective import build_objective
from jaxdistill.terms import TERMS, Views


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _views(rng):
    s = rng.normal(size=(6, 5))
    t = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    return s, t, labels, Views(jnp.asarray(s, jnp.float32), {}, jnp.asarray(t, jnp.float32), {},
                               jnp.asarray(labels, jnp.int32))


def test_weighted_sum_matches_numpy():
    s, t, labels, views = _views(np.random.default_rng(0))
    objective = build_objective({"ce": {"weight": 0.3}, "kd": {"weight": 0.7, "temperature": 2.0}},
                                has_teacher=True)
    total, terms, _ = objective(views, jnp.int32(0))
    ce = np.mean(-np.log(_softmax(s))[np.arange(6), labels])
    ps, pt = _softmax(s / 2.0), _softmax(t / 2.0)
    kd = np.mean(4.0 * np.sum(pt * (np.log(pt) - np.log(ps)), -1))
    np.testing.assert_allclose(terms["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(terms["kd"], kd, rtol=1e-5)
    np.testing.assert_allclose(total, 0.3 * ce + 0.7 * kd, rtol=1e-5)


def test_linear_warmup_of_a_weight():
    views = _views(np.random.default_rng(1))[3]
    objective = build_objective({"kd": {"weight": 2.0, "warmup_steps": 4}}, has_teacher=True)
    totals = [float(objective(views, jnp.int32(step))[0]) for step in (0, 1, 3, 10)]
    kd = float(objective(views, jnp.int32(0))[1]["kd"])
    np.testing.assert_allclose(totals, [2.0 * kd * f for f in (0.25, 0.5, 1.0, 1.0)], rtol=1e-6)


def test_same_loss_twice_under_two_names():
    objective = build_objective({"soft": {"loss": "kd", "temperature": 1.0},
                                 "hard": {"loss": "kd", "temperature": 8.0}}, has_teacher=True)
    assert [t.name for t in objective.terms] == ["soft", "hard"]
    assert dict(objective.terms[1].hparams) == {"temperature": 8.0}


BAD_TERMS = [
    ({"kdd": {}}, True, f"config.objective.kdd.loss: unknown loss 'kdd'; available: {sorted(TERMS)}"),
    ({"kd": {"temperature": 0.0}}, True, "config.objective.kd.temperature must be > 0, got 0.0"),
    ({"kd": {"temperature": -1.0}}, True, "config.objective.kd.temperature must be > 0, got -1.0"),
    ({"ce": {"weight": -0.5}}, False, "config.objective.ce.weight must be >= 0, got -0.5"),
    ({"kd": {"temprature": 2.0}}, True, ("config.objective.kd: unknown field(s) ['temprature'] "
                                         "for loss 'kd'; it takes ['loss', 'standardize', "
                                         "'teacher', 'temperature', 'warmup_steps', 'weight']")),
    ({"kd": {}}, False, ("config.objective.kd: loss 'kd' needs a teacher; set "
                         "config.teacher.model and config.teacher.checkpoint, or remove the "
                         "term")),
    ({}, False, "config.objective is empty; add at least one term, e.g. ce=dict(weight=1.0)"),
]


@pytest.mark.parametrize("terms, has_teacher, message", BAD_TERMS)
def test_bad_terms_name_the_field(terms, has_teacher, message):
    assert refusal(lambda: build_objective(terms, has_teacher=has_teacher)) == message


def test_several_teachers_mean_of_softened_probabilities_and_by_name():
    rng = np.random.default_rng(2)
    s, t1, t2 = (rng.normal(size=(5, 4)) for _ in range(3))
    labels = jnp.zeros(5, jnp.int32)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    views = Views(f32(s), {}, f32(t1), {}, labels, None,
                  {"teacher": (f32(t1), {}), "second": (f32(t2), {})})
    objective = build_objective({"avg": {"loss": "kd", "temperature": 2.0, "teacher": "mean"},
                                 "other": {"loss": "kd", "temperature": 2.0, "teacher": "second"}},
                                has_teacher=True)
    _, terms, _ = objective(views, jnp.int32(0))
    ps = _softmax(s / 2.0)
    for name, pt in (("avg", (_softmax(t1 / 2.0) + _softmax(t2 / 2.0)) / 2),
                     ("other", _softmax(t2 / 2.0))):
        expected = np.mean(4.0 * np.sum(pt * (np.log(pt) - np.log(ps)), -1))
        np.testing.assert_allclose(terms[name], expected, rtol=1e-5, err_msg=name)
    objective = build_objective({"x": {"loss": "kd", "teacher": "third"}}, has_teacher=True)
    assert refusal(lambda: objective.check_models(views)) == (
        "config.objective.x.teacher: no teacher named 'third'; configured: ['second', 'teacher'] "
        "(or 'mean')")
