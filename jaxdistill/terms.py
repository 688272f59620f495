"""The method library as objective terms: one function per method and one registry line.

A term is `fn(views, **hparams)` returning per-example values `[B]`, per-position values
`[B, L]` (language models; shaped like `views.weights`) or a batch-level scalar (or a
`TermOutput`). Logit terms (`TermSpec.logit_term`) read only the logits and labels, per
position, so a chunked step can run them chunk by chunk over the sequence. Terms with learned or running parts (adapters, embedding
heads, memory banks, a discriminator) also declare `make_aux(views, rngs, num_data,
**hparams) -> (module | None, state | None)`, sized from abstract shapes, and receive
`aux=AuxIO(...)` at call time. Hyper-parameters named `student_feature` /
`teacher_feature` pick a model feature by name and are checked against the models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill import losses
from jaxdistill.adapters import Adapter, Discriminator, Embed


class Views(NamedTuple):
    """What a loss term sees in one step."""

    student_logits: jax.Array
    student_features: Mapping[str, jax.Array]
    teacher_logits: jax.Array | None
    teacher_features: Mapping[str, jax.Array] | None
    labels: jax.Array
    indices: jax.Array | None = None  # example index within the training split
    teachers: Mapping[str, tuple[jax.Array, Mapping[str, jax.Array]]] | None = None  # by name
    weights: jax.Array | None = None  # the task's per-position weights, shaped like labels
    chunks: Any = None  # `losses.chunked.LogitChunks` of a chunked step (logits are None)

    @property
    def per_token(self) -> bool:
        """True for sequence tasks: features are [B, L, ...] and terms return [B, L]."""
        return self.weights is not None and self.weights.ndim == 2


class AuxIO(NamedTuple):
    """A term's auxiliary parts in one step: its module (params merged in), its running
    state, a per-step rng and the size of the training split."""

    module: Any
    state: Any
    rng: jax.Array
    num_data: int


@dataclasses.dataclass(frozen=True)
class TermOutput:
    """value: the term's per-example or scalar loss (weighted by the objective);
    extra_loss: added unweighted (e.g. a discriminator's own loss, which reaches only
    its own params); state: the term's new running state; metrics: extra scalars."""

    value: jax.Array
    extra_loss: jax.Array | float = 0.0
    state: Any = None
    metrics: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TermSpec:
    fn: Callable[..., Any]
    needs_teacher: bool = True
    needs_labels: bool = False
    make_aux: Callable[..., tuple[Any, Any]] | None = None
    own_optimizer: bool = False  # aux params get `optax.adam(learning_rate, b1=0.5)`
    logit_term: bool = False  # a per-position function of logits and labels only


def _pair(v: Views, student_feature: str, teacher_feature: str):
    return v.student_features[student_feature], v.teacher_features[teacher_feature]


# --- logits ---------------------------------------------------------------------------

def ce(v: Views, label_smoothing: float = 0.0):
    return losses.cross_entropy(v.student_logits, v.labels, label_smoothing=label_smoothing)


def kd(v: Views, temperature: float = 4.0, standardize: bool = False):
    return losses.kd_loss(v.student_logits, v.teacher_logits, temperature=temperature,
                          standardize=standardize)


def fkl(v: Views, temperature: float = 1.0):
    return losses.forward_kl(v.student_logits, v.teacher_logits, temperature=temperature)


def rkl(v: Views, temperature: float = 1.0):
    return losses.reverse_kl(v.student_logits, v.teacher_logits, temperature=temperature)


def jsd(v: Views, temperature: float = 1.0, beta: float = 0.5):
    return losses.jsd(v.student_logits, v.teacher_logits, temperature=temperature, beta=beta)


def tvd(v: Views, temperature: float = 1.0):
    return losses.tvd(v.student_logits, v.teacher_logits, temperature=temperature)


def skl(v: Views, alpha: float = 0.1, temperature: float = 1.0):
    return losses.skew_kl(v.student_logits, v.teacher_logits, alpha=alpha,
                          temperature=temperature)


def srkl(v: Views, alpha: float = 0.1, temperature: float = 1.0):
    return losses.skew_reverse_kl(v.student_logits, v.teacher_logits, alpha=alpha,
                                  temperature=temperature)


def dkd(v: Views, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0):
    return losses.dkd_loss(v.student_logits, v.teacher_logits, v.labels, alpha=alpha, beta=beta,
                           temperature=temperature)


# --- features -------------------------------------------------------------------------

def make_hint(v: Views, rngs, num_data, student_feature: str, teacher_feature: str):
    s, t = _pair(v, student_feature, teacher_feature)
    return (None if s.shape == t.shape else Adapter(s.shape, t.shape, rngs=rngs)), None


def _per_token(loss, s: jax.Array, t: jax.Array) -> jax.Array:
    """A per-example loss of [N, ...] features applied to each position of [B, L, ...]."""
    b, length = s.shape[:2]
    flat = loss(s.reshape(b * length, *s.shape[2:]), t.reshape(b * length, *t.shape[2:]))
    return flat.reshape(b, length)


def hint(v: Views, student_feature: str, teacher_feature: str, *, aux: AuxIO):
    """FitNets; on a sequence task per token, over the hidden width (e.g. `block2`)."""
    s, t = _pair(v, student_feature, teacher_feature)
    s = s if aux.module is None else aux.module(s)
    return _per_token(losses.hint_loss, s, t) if v.per_token else losses.hint_loss(s, t)


def at(v: Views, student_feature: str, teacher_feature: str, p: float = 2.0):
    """Attention transfer (Zagoruyko & Komodakis) on conv maps; on a sequence task the
    self-attention distribution transfer of MiniLM per query token (`attn<i>` features)."""
    s, t = _pair(v, student_feature, teacher_feature)
    if v.per_token:
        return losses.attention_distribution_loss(s, t)
    return losses.attention_transfer_loss(s, t, p=p)


def sp(v: Views, student_feature: str, teacher_feature: str):
    return losses.similarity_preserving_loss(*_pair(v, student_feature, teacher_feature))


def rkd(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding",
        distance_weight: float = 25.0, angle_weight: float = 50.0):
    s, t = _pair(v, student_feature, teacher_feature)
    return losses.rkd_loss(s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1),
                           distance_weight=distance_weight, angle_weight=angle_weight)


def pkt(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding"):
    s, t = _pair(v, student_feature, teacher_feature)
    return losses.pkt_loss(s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1))


# --- contrastive (CRD) ----------------------------------------------------------------

def make_crd(v: Views, rngs, num_data, student_feature: str = "embedding",
             teacher_feature: str = "embedding", dim: int = 128, num_negatives: int = 4096,
             temperature: float = 0.07, momentum: float = 0.5):
    """Embedding heads (trainable) and the two memory banks with their normalisers."""
    if not 0 < num_negatives < num_data:
        raise ValueError(f"num_negatives must be in [1, {num_data - 1}] for a training split of "
                         f"{num_data} examples, got {num_negatives}")
    s, t = _pair(v, student_feature, teacher_feature)
    heads = nnx.Dict(student=Embed(math.prod(s.shape[1:]), dim, rngs=rngs),
                     teacher=Embed(math.prod(t.shape[1:]), dim, rngs=rngs))
    stdv = 1.0 / jnp.sqrt(dim / 3.0)  # the official code's uniform init, then rows normalised
    bank_keys = jax.random.split(rngs.params(), 2)
    banks = [losses.l2_normalize(jax.random.uniform(k, (num_data, dim), minval=-stdv, maxval=stdv))
             for k in bank_keys]
    state = {"student_bank": banks[0], "teacher_bank": banks[1],
             "student_z": jnp.float32(-1.0), "teacher_z": jnp.float32(-1.0)}
    return heads, state


def crd(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding",
        dim: int = 128, num_negatives: int = 4096, temperature: float = 0.07,
        momentum: float = 0.5, *, aux: AuxIO):
    """Tian et al., "Contrastive Representation Distillation", ICLR 2020: the student
    embedding against the teacher bank plus the teacher embedding against the student bank,
    NCE with `num_negatives` negatives; banks updated by momentum after the step."""
    s, t = _pair(v, student_feature, teacher_feature)
    es, et = aux.module["student"](s), aux.module["teacher"](t)
    idx, state = v.indices, aux.state
    negatives = losses.sample_negatives(aux.rng, es.shape[0], num_negatives, aux.num_data, idx)
    out_s = losses.crd_scores(es, state["teacher_bank"], idx, negatives, temperature)
    out_t = losses.crd_scores(et, state["student_bank"], idx, negatives, temperature)
    z_s = jnp.where(state["student_z"] > 0, state["student_z"],
                    losses.crd_normalizer(out_s, aux.num_data))
    z_t = jnp.where(state["teacher_z"] > 0, state["teacher_z"],
                    losses.crd_normalizer(out_t, aux.num_data))
    value = (losses.crd_nce_loss(out_s, z_s, aux.num_data)
             + losses.crd_nce_loss(out_t, z_t, aux.num_data))
    new_state = {"student_bank": losses.crd_update_bank(state["student_bank"], idx, es, momentum),
                 "teacher_bank": losses.crd_update_bank(state["teacher_bank"], idx, et, momentum),
                 "student_z": z_s, "teacher_z": z_t}
    return TermOutput(value, state=new_state)


# --- adversarial ----------------------------------------------------------------------

def make_adversarial(v: Views, rngs, num_data, temperature: float = 1.0,
                     hidden: tuple[int, ...] = (128,), learning_rate: float = 1e-4):
    return Discriminator(v.student_logits.shape[-1], tuple(hidden), rngs=rngs), None


def adversarial(v: Views, temperature: float = 1.0, hidden: tuple[int, ...] = (128,),
                learning_rate: float = 1e-4, *, aux: AuxIO):
    """Non-saturating GAN on softened class probabilities: the discriminator (own optimizer)
    learns teacher = real, student = fake; the student's term is the generator loss."""
    p_s = jax.nn.softmax(v.student_logits / temperature)
    p_t = jax.nn.softmax(v.teacher_logits / temperature)
    disc = aux.module
    d_loss = losses.discriminator_loss(disc(p_t), disc(jax.lax.stop_gradient(p_s)))
    graphdef, params = nnx.split(disc)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
    d_mean = jnp.mean(d_loss)
    return TermOutput(losses.generator_loss(frozen(p_s)), extra_loss=d_mean,
                      metrics={"discriminator": d_mean})


TERMS: dict[str, TermSpec] = {
    "ce": TermSpec(ce, needs_teacher=False, needs_labels=True, logit_term=True),
    "kd": TermSpec(kd, logit_term=True),
    "fkl": TermSpec(fkl, logit_term=True),
    "rkl": TermSpec(rkl, logit_term=True),
    "jsd": TermSpec(jsd, logit_term=True),
    "tvd": TermSpec(tvd, logit_term=True),
    "skl": TermSpec(skl, logit_term=True),
    "srkl": TermSpec(srkl, logit_term=True),
    "dkd": TermSpec(dkd, needs_labels=True, logit_term=True),
    "hint": TermSpec(hint, make_aux=make_hint),
    "at": TermSpec(at),
    "sp": TermSpec(sp),
    "rkd": TermSpec(rkd),
    "pkt": TermSpec(pkt),
    "crd": TermSpec(crd, make_aux=make_crd),
    "adversarial": TermSpec(adversarial, make_aux=make_adversarial, own_optimizer=True),
}
