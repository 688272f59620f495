"""The training objective: a weighted sum of loss terms named in the config.

Config form (one entry per term; `loss` defaults to the entry's name, so the same loss
can appear twice under different names, e.g. attention transfer on two stages)::

    config.objective = dict(ce=dict(weight=0.1),
                            kd=dict(weight=0.9, temperature=4.0, warmup_steps=0),
                            at=dict(weight=1000.0, student_feature="stage3",
                                    teacher_feature="stage3"))

Per-example and per-position terms are reduced by the weighted mean
`sum(v * w) / max(sum(w), 1)` with the task's weights (ones for classification, the token
mask of a language model), so padding and document boundaries never count; batch-level
terms are used as they are. The task's train metrics (accuracy, agreement) are reduced
the same way. In a chunked step (`Views.chunks`) the logit terms and metrics run chunk by
chunk over the sequence (`jaxdistill.losses.chunked`). The terms live in `jaxdistill.terms`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.losses.chunked import weighted_sums
from jaxdistill.terms import TERMS, AuxIO, TermOutput, TermSpec, Views

_COMMON = ("loss", "weight", "warmup_steps", "teacher")
PRIMARY = "teacher"   # the name of `config.teacher` among several teachers
COMMON_DEFAULTS = {"weight": 1.0, "warmup_steps": 0, "teacher": PRIMARY}  # a term's, unless set
MEAN = "mean"         # a term's teacher='mean': the average of all teachers' softened probabilities
FEATURE_FIELDS = ("student_feature", "teacher_feature")
RESERVED_NAMES = ("loss", "grad_norm", "learning_rate")  # metrics the step reports itself


def _names(value) -> tuple:
    """A feature field's names: one name, or a tuple of them (a term over several pairs)."""
    return (value,) if isinstance(value, str) else tuple(value)


def weighted_mean(value: jax.Array, weights: jax.Array | None) -> jax.Array:
    """`sum(value * weights) / max(sum(weights), 1)` (weights None: all 1); a scalar
    (batch-level) value as is."""
    value = value.astype(jnp.float32)
    if value.ndim == 0:
        return value
    if weights is None:
        weights = jnp.ones(value.shape, jnp.float32)
    if value.shape != weights.shape:
        raise ValueError(f"returned values of shape {value.shape}, but the task weighs "
                         f"positions of shape {weights.shape}")
    return jnp.sum(value * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    spec: TermSpec
    weight: float
    warmup_steps: int
    hparams: tuple[tuple[str, Any], ...]
    aux_def: Any = None   # graphdef of the term's aux module, set by `Objective.bind`
    num_data: int = 0     # examples in the training split, set by `Objective.bind`
    teacher_name: str = PRIMARY  # which teacher the term distils from (or MEAN)
    split_labels: Any = dataclasses.field(default=None, compare=False)  # set by `bind`

    def weight_at(self, step: jax.Array) -> jax.Array:
        """Constant weight, or a linear ramp from 0 over `warmup_steps`."""
        if self.warmup_steps <= 0:
            return jnp.float32(self.weight)
        ramp = jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / self.warmup_steps)
        return self.weight * ramp

    def views_for(self, views: Views) -> Views:
        """`views` with the teacher this term distils from in the teacher slots."""
        if self.teacher_name == PRIMARY or views.teachers is None:
            return views
        if self.teacher_name == MEAN:
            t = float(dict(self.hparams).get("temperature", 1.0))
            probs = jnp.mean(jnp.stack([jax.nn.softmax(logits / t)
                                        for logits, _ in views.teachers.values()]), axis=0)
            # logits whose softmax at temperature t is the mean of the teachers' softmaxes
            return views._replace(teacher_logits=t * jnp.log(probs), teacher_features={})
        logits, features = views.teachers[self.teacher_name]
        return views._replace(teacher_logits=logits, teacher_features=features)

    def make_aux(self, views: Views, rngs: nnx.Rngs):
        """The term's aux module and running state, sized from abstract `views`."""
        shapes = jax.eval_shape(self.views_for, views)
        extra = {} if self.split_labels is None else {"split_labels": self.split_labels}
        return self.spec.make_aux(shapes, rngs, self.num_data, **extra, **dict(self.hparams))


@dataclasses.dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]
    metrics: tuple[tuple[str, Callable[[Views], jax.Array]], ...] = ()  # per-position, no grad

    @property
    def needs_teacher(self) -> bool:
        return any(t.spec.needs_teacher for t in self.terms)

    @property
    def needs_attention_maps(self) -> bool:
        """Whether a term reads a model's attention maps (features named `attn<i>`)."""
        return any(name.startswith("attn") for t in self.terms for field, value in t.hparams
                   if field in FEATURE_FIELDS for name in _names(value))

    @property
    def aux_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.spec.make_aux is not None)

    @property
    def own_learning_rates(self) -> dict[str, float]:
        """{term: learning rate} of the aux terms with their own optimizer (`make_optimizer`'s
        `own`)."""
        return {t.name: float(dict(t.hparams).get("learning_rate", 1e-4))
                for t in self.aux_terms if t.spec.own_optimizer}

    def check_models(self, views: Views) -> None:
        """Raises ValueError if a term names a teacher that is not configured, or a feature
        its model does not return (checked on abstract `views`)."""
        teachers = views.teachers or {}
        for term in self.terms:
            if term.spec.needs_teacher and term.teacher_name not in (*teachers, MEAN):
                raise ValueError(f"config.objective.{term.name}.teacher: no teacher named "
                                 f"'{term.teacher_name}'; configured: {sorted(teachers)} "
                                 f"(or '{MEAN}')")
            teacher_features = ({} if term.teacher_name == MEAN
                                else teachers.get(term.teacher_name, (None, {}))[1])
            for field, value in term.hparams:
                if field not in FEATURE_FIELDS:
                    continue
                side, available = ("student", views.student_features) if (
                    field == FEATURE_FIELDS[0]) else ("teacher", teacher_features)
                for name in _names(value):
                    if name not in available:
                        raise ValueError(f"config.objective.{term.name}.{field}: the {side} model "
                                         f"has no feature '{name}'; it has {sorted(available)}")

    @property
    def needs_split_labels(self) -> bool:
        """Whether a term's aux parts take the training split's labels (CRD's negatives)."""
        return any(t.spec.takes_split_labels for t in self.terms)

    def bind(self, views: Views, num_data: int, split_labels=None) -> Objective:
        """Fixes the aux modules' structure from abstract `views` (shapes only); terms that
        take them get the training split's labels `split_labels` [num_data] (or None)."""
        terms = []
        for term in self.terms:
            if term.spec.make_aux is not None:
                term = dataclasses.replace(term, num_data=num_data, split_labels=(
                    split_labels if term.spec.takes_split_labels else None))
                try:
                    module = nnx.eval_shape(lambda t=term: t.make_aux(views, nnx.Rngs(0))[0])
                except ValueError as e:
                    raise ValueError(f"config.objective.{term.name}: {e}") from None
                if module is not None:
                    term = dataclasses.replace(term, aux_def=nnx.split(module)[0])
            terms.append(term)
        return Objective(tuple(terms), self.metrics)

    def init_aux(self, views: Views, rng: jax.Array) -> tuple[dict, dict]:
        """Initial aux params {term: nnx.State} and running state {term: pytree}."""
        params, state = {}, {}
        for i, term in enumerate(self.aux_terms):
            module, running = term.make_aux(views, nnx.Rngs(params=jax.random.fold_in(rng, i)))
            if module is not None:
                params[term.name] = nnx.split(module)[1]
            if running is not None:
                state[term.name] = running
        return params, state

    def __call__(self, views: Views, step: jax.Array, aux_params: Mapping | None = None,
                 aux_state: Mapping | None = None, rng: jax.Array | None = None):
        """Returns (weighted total, {term: reduced value, ..., metric: value}, new aux state)."""
        weights = views.weights
        chunked = self._chunked(views) if views.chunks is not None else {}
        values, new_state = {}, dict(aux_state or {})
        total = jnp.float32(0.0)
        for i, term in enumerate(self.terms):
            if term.name in chunked:
                out = TermOutput(chunked[term.name])
            else:
                kwargs = dict(term.hparams)
                if term.spec.make_aux is not None:
                    module = (nnx.merge(term.aux_def, aux_params[term.name])
                              if term.aux_def is not None else None)
                    kwargs["aux"] = AuxIO(module, new_state.get(term.name),
                                          jax.random.fold_in(rng, i), term.num_data)
                try:
                    out = term.spec.fn(term.views_for(views), **kwargs)
                    out = out if isinstance(out, TermOutput) else TermOutput(out)
                    out = dataclasses.replace(out, value=weighted_mean(out.value, weights))
                except ValueError as e:
                    raise ValueError(f"config.objective.{term.name}: {e}") from None
            values[term.name] = out.value
            values.update({f"{term.name}_{k}": m for k, m in out.metrics.items()})
            total = total + term.weight_at(step) * out.value + out.extra_loss
            if out.state is not None:
                new_state[term.name] = out.state
        for name, fn in self.metrics:
            values[name] = (chunked[name] if name in chunked
                            else jax.lax.stop_gradient(weighted_mean(fn(views), weights)))
        return total, values, new_state

    def _chunked(self, views: Views) -> dict[str, jax.Array]:
        """The weighted means of the logit terms and metrics, chunk by chunk."""
        names, fns = [], []
        for term in self.terms:
            if term.spec.logit_term:
                names.append(term.name)
                fns.append(functools.partial(term.spec.fn, **dict(term.hparams)))
        for name, fn in self.metrics:
            names.append(name)
            fns.append(lambda v, fn=fn: jax.lax.stop_gradient(fn(v)))
        try:
            sums = weighted_sums(fns, views.chunks)
        except ValueError as e:
            raise ValueError(f"config.objective: {e}") from None
        means = sums / jnp.maximum(jnp.sum(views.chunks.weights.astype(jnp.float32)), 1.0)
        return dict(zip(names, means))


def _fn_params(spec: TermSpec) -> list[inspect.Parameter]:
    """The hyper-parameters of a term function (its arguments but the views and aux)."""
    return [p for p in inspect.signature(spec.fn).parameters.values()
            if p.name not in ("v", "aux")]


def _fn_fields(spec: TermSpec) -> tuple[set[str], set[str]]:
    """(all hyper-parameters, required ones) of a term function."""
    params = _fn_params(spec)
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


def term_defaults(name: str, loss: str | None = None) -> dict[str, Any]:
    """The value each field of term `name` (loss `loss`, by default the name) takes where
    the config leaves it out: the common fields' and the loss function's keyword
    defaults; {} for an unknown loss."""
    loss = loss or name
    if loss not in TERMS:
        return {}
    return {"loss": loss, **COMMON_DEFAULTS,
            **{p.name: p.default for p in _fn_params(TERMS[loss]) if p.default is not p.empty}}


def build_objective(objective_cfg: Mapping[str, Mapping[str, Any]], *,
                    has_teacher: bool, task=None) -> Objective:
    """Validates the config's terms and builds the `Objective` (with `task`'s train
    metrics and its list of supported terms); raises a `ValueError` that names the
    offending field (`config.objective.<term>.<field>`)."""
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
        if name in RESERVED_NAMES:
            raise ValueError(f"{where}: '{name}' is a metric the step reports; name the term "
                             "differently (and set loss='...')")
        if task is not None and task.terms is not None and loss not in task.terms:
            raise ValueError(f"{where}: loss '{loss}' does not support task '{task.name}'; "
                             f"it supports {sorted(task.terms)}")
        if spec.needs_teacher and not has_teacher:
            raise ValueError(f"{where}: loss '{loss}' needs a teacher; set config.teacher.model "
                             "and config.teacher.checkpoint, or remove the term")
        weight = float(raw.get("weight", COMMON_DEFAULTS["weight"]))
        if weight < 0:
            raise ValueError(f"{where}.weight must be >= 0, got {weight}")
        warmup = int(raw.get("warmup_steps", COMMON_DEFAULTS["warmup_steps"]))
        if warmup < 0:
            raise ValueError(f"{where}.warmup_steps must be >= 0, got {warmup}")
        allowed, required = _fn_fields(spec)
        hparams = {k: v for k, v in raw.items() if k not in _COMMON}
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} for loss '{loss}'; "
                             f"it takes {sorted(allowed | set(_COMMON))}")
        missing = sorted(required - set(hparams))
        if missing:
            raise ValueError(f"{where}: loss '{loss}' needs field(s) {missing}")
        if "temperature" in hparams and not float(hparams["temperature"]) > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {hparams['temperature']}")
        hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()}
        teacher = str(raw.get("teacher", COMMON_DEFAULTS["teacher"]))
        terms.append(Term(name, spec, weight, warmup, tuple(sorted(hparams.items())),
                          teacher_name=teacher))
    metrics = tuple(task.train_metrics(has_teacher).items()) if task is not None else ()
    clash = sorted({t.name for t in terms} & {m for m, _ in metrics})
    if clash:
        raise ValueError(f"config.objective.{clash[0]}: '{clash[0]}' is a metric the step "
                         "reports; name the term differently (and set loss='...')")
    return Objective(tuple(terms), metrics)
