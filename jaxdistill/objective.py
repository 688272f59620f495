"""The training objective: a weighted sum of loss terms named in the config.

Each term is one function of the step's `Views` (student and teacher outputs, labels)
and its hyper-parameters; adding a method is one function and one line in `TERMS`.
Config form (one entry per term; `loss` defaults to the entry's name, so the same loss
can appear twice under different names)::

    config.objective = dict(ce=dict(weight=0.1),
                            kd=dict(weight=0.9, temperature=4.0, warmup_steps=0))

Per-example terms are averaged over the batch; batch-level terms are used as they are.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill import losses


class Views(NamedTuple):
    """What a loss term sees in one step."""

    student_logits: jax.Array
    student_features: Mapping[str, jax.Array]
    teacher_logits: jax.Array | None
    teacher_features: Mapping[str, jax.Array] | None
    labels: jax.Array


@dataclasses.dataclass(frozen=True)
class TermSpec:
    """A registered loss: `fn(views, **hparams)` -> per-example `[B]` or scalar."""

    fn: Callable[..., jax.Array]
    needs_teacher: bool = True


def _ce(v: Views, label_smoothing: float = 0.0) -> jax.Array:
    return losses.cross_entropy(v.student_logits, v.labels, label_smoothing=label_smoothing)


def _kd(v: Views, temperature: float = 4.0, standardize: bool = False) -> jax.Array:
    return losses.kd_loss(v.student_logits, v.teacher_logits, temperature=temperature,
                          standardize=standardize)


TERMS: dict[str, TermSpec] = {
    "ce": TermSpec(_ce, needs_teacher=False),
    "kd": TermSpec(_kd),
}

_COMMON = ("loss", "weight", "warmup_steps")


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    spec: TermSpec
    weight: float
    warmup_steps: int
    hparams: tuple[tuple[str, Any], ...]

    def weight_at(self, step: jax.Array) -> jax.Array:
        """Constant weight, or a linear ramp from 0 over `warmup_steps`."""
        if self.warmup_steps <= 0:
            return jnp.float32(self.weight)
        ramp = jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / self.warmup_steps)
        return self.weight * ramp


@dataclasses.dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]

    @property
    def needs_teacher(self) -> bool:
        return any(t.spec.needs_teacher for t in self.terms)

    def __call__(self, views: Views, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns the weighted total and each term's (unweighted, batch-reduced) value."""
        values = {}
        total = jnp.float32(0.0)
        for term in self.terms:
            value = jnp.mean(term.spec.fn(views, **dict(term.hparams)).astype(jnp.float32))
            values[term.name] = value
            total = total + term.weight_at(step) * value
        return total, values


def build_objective(objective_cfg: Mapping[str, Mapping[str, Any]], *,
                    has_teacher: bool) -> Objective:
    """Validates the config's terms and builds the `Objective`; raises a `ValueError` that
    names the offending field (`config.objective.<term>.<field>`)."""
    if not objective_cfg:
        raise ValueError("config.objective is empty; add at least one term, e.g. ce=dict(weight=1.0)")
    terms = []
    for name, raw in objective_cfg.items():
        raw = dict(raw)
        where = f"config.objective.{name}"
        loss = raw.get("loss", name)
        if loss not in TERMS:
            raise ValueError(f"{where}.loss: unknown loss '{loss}'; available: {sorted(TERMS)}")
        spec = TERMS[loss]
        if spec.needs_teacher and not has_teacher:
            raise ValueError(f"{where}: loss '{loss}' needs a teacher; set config.teacher.model "
                             "and config.teacher.checkpoint, or remove the term")
        weight = float(raw.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"{where}.weight must be >= 0, got {weight}")
        warmup = int(raw.get("warmup_steps", 0))
        if warmup < 0:
            raise ValueError(f"{where}.warmup_steps must be >= 0, got {warmup}")
        allowed = {p for p in inspect.signature(spec.fn).parameters if p != "v"}
        hparams = {k: v for k, v in raw.items() if k not in _COMMON}
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} for loss '{loss}'; "
                             f"it takes {sorted(allowed | set(_COMMON))}")
        if "temperature" in hparams and not float(hparams["temperature"]) > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {hparams['temperature']}")
        terms.append(Term(name, spec, weight, warmup, tuple(sorted(hparams.items()))))
    return Objective(tuple(terms))
