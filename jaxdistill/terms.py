"""The method library as objective terms: one function per method and one registry line.

A term is `fn(views, **hparams)` returning per-example values `[B]`, per-position values
`[B, L]` (language models; shaped like `views.weights`) or a batch-level scalar (or a
`TermOutput`). Logit terms (`TermSpec.logit_term`) read only the logits and labels, per
position, so a chunked step can run them chunk by chunk over the sequence. Terms with learned or running parts (adapters, embedding
heads, memory banks, a discriminator) also declare `make_aux(views, rngs, num_data,
**hparams) -> (module | None, state | None)`, sized from abstract shapes, and receive
`aux=AuxIO(...)` at call time. Hyper-parameters named `student_feature` /
`teacher_feature` pick a model feature by name (`at`: or a tuple of names, one term over
several stage pairs) and are checked against the models. `make_crd` also takes the
training split's labels (`split_labels=`) for the reference's other-class negatives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill import losses
from jaxdistill.adapters import Adapter, Discriminator, Embed
from jaxdistill.losses.sparse_kd import bucket_logits


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
    teacher_entries: Any = None  # a token store's `TeacherEntries` (teacher_logits is None)

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
    make_aux: Callable[..., tuple[Any, Any]] | None = None
    own_optimizer: bool = False  # aux params get `optax.adam(learning_rate, b1=0.5)`
    logit_term: bool = False  # a per-position function of logits and labels only
    takes_split_labels: bool = False  # make_aux(..., split_labels=[num_data] labels) when known


def _pair(v: Views, student_feature: str, teacher_feature: str):
    return v.student_features[student_feature], v.teacher_features[teacher_feature]


# --- logits ---------------------------------------------------------------------------

def _logits(v: Views, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(student, teacher) logits of a divergence term: the models' own, or with a token
    store's top-k entries the two bucketed distributions (`losses.sparse_kd`)."""
    if v.teacher_entries is None:
        return v.student_logits, v.teacher_logits
    return bucket_logits(v.student_logits, v.teacher_entries, temperature=temperature)


def ce(v: Views, label_smoothing: float = 0.0):
    return losses.cross_entropy(v.student_logits, v.labels, label_smoothing=label_smoothing)


def kd(v: Views, temperature: float = 4.0, standardize: bool = False):
    return losses.kd_loss(*_logits(v, temperature), temperature=temperature,
                          standardize=standardize)


def fkl(v: Views, temperature: float = 1.0):
    return losses.forward_kl(*_logits(v, temperature), temperature=temperature)


def rkl(v: Views, temperature: float = 1.0):
    return losses.reverse_kl(*_logits(v, temperature), temperature=temperature)


def jsd(v: Views, temperature: float = 1.0, beta: float = 0.5):
    return losses.jsd(*_logits(v, temperature), temperature=temperature, beta=beta)


def tvd(v: Views, temperature: float = 1.0):
    return losses.tvd(*_logits(v, temperature), temperature=temperature)


def skl(v: Views, alpha: float = 0.1, temperature: float = 1.0):
    return losses.skew_kl(*_logits(v, temperature), alpha=alpha,
                          temperature=temperature)


def srkl(v: Views, alpha: float = 0.1, temperature: float = 1.0):
    return losses.skew_reverse_kl(*_logits(v, temperature), alpha=alpha,
                                  temperature=temperature)


def dkd(v: Views, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
        standardize: bool = False):
    return losses.dkd_loss(v.student_logits, v.teacher_logits, v.labels, alpha=alpha, beta=beta,
                           temperature=temperature, standardize=standardize)


# --- different vocabularies (task cross_tokenizer: teacher logits at aligned positions) --

def _aligned(v: Views) -> jax.Array:
    """The aligned-position mask of task cross_tokenizer's teacher features."""
    if "aligned" not in (v.teacher_features or {}):
        raise ValueError("compares models with different tokenizers: use task "
                         "'cross_tokenizer'")
    return v.teacher_features["aligned"]


def uld(v: Views, temperature: float = 1.0):
    """Universal Logit Distillation (Boizard et al. 2024) at aligned positions."""
    return _aligned(v) * losses.uld_loss(
        v.student_logits, v.teacher_logits, temperature=temperature)


def xtok_kl(v: Views, temperature: float = 1.0):
    """KL(teacher || student merged onto the teacher's units) at aligned positions."""
    return _aligned(v) * losses.merged_kl(
        v.student_logits, v.teacher_logits, v.teacher_features["token_map"],
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


def _feature_pairs(student_feature, teacher_feature) -> list[tuple[str, str]]:
    """One feature name each, or equally long tuples of names: the pairs they form."""
    if isinstance(student_feature, str) and isinstance(teacher_feature, str):
        return [(student_feature, teacher_feature)]
    s_names, t_names = (tuple(f) if not isinstance(f, str) else (f,)
                        for f in (student_feature, teacher_feature))
    if len(s_names) != len(t_names) or not s_names or not all(
            isinstance(n, str) for n in s_names + t_names):
        raise ValueError(f"student_feature {student_feature!r} and teacher_feature "
                         f"{teacher_feature!r} must be one name each or as many names each")
    return list(zip(s_names, t_names))


def at(v: Views, student_feature: str | tuple[str, ...], teacher_feature: str | tuple[str, ...],
       p: float = 2.0):
    """Attention transfer (Zagoruyko & Komodakis) on conv maps (of any spatial sizes: the
    larger map is average-pooled to the smaller); on a sequence task the self-attention
    distribution transfer of MiniLM per query token (`attn<i>` features). Tuples of names
    (e.g. `('stage1', 'stage2', 'stage3')` each) sum the loss over the stage pairs under the
    one weight, as `at_loss` of mdistiller and RepDistiller's `sum(loss_group)` do."""
    total = 0.0
    for s_name, t_name in _feature_pairs(student_feature, teacher_feature):
        s, t = _pair(v, s_name, t_name)
        total = total + (losses.attention_distribution_loss(s, t) if v.per_token
                         else losses.attention_transfer_loss(s, t, p=p))
    return total


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


# --- sentence embeddings (task 'sentence_embedding': labels are the token mask) ---------

def embed_cos(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding"):
    """1 - cos of the pooled sentence embeddings."""
    return losses.cosine_distance(*_pair(v, student_feature, teacher_feature))


def embed_mse(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding"):
    """MSE of the L2-normalised pooled sentence embeddings."""
    return losses.normalized_mse(*_pair(v, student_feature, teacher_feature))


def hidden_mse(v: Views, student_feature: str | tuple[str, ...],
               teacher_feature: str | tuple[str, ...]):
    """TinyBERT hidden-state transfer over the real tokens, summed over the layer pairs
    (e.g. `('block1', 'block2')` and `('block3', 'block6')`)."""
    return sum(losses.masked_hidden_mse(*_pair(v, s, t), v.labels)
               for s, t in _feature_pairs(student_feature, teacher_feature))


def attn_kl(v: Views, student_feature: str | tuple[str, ...],
            teacher_feature: str | tuple[str, ...]):
    """MiniLM attention-distribution transfer over the real query tokens, summed over the
    layer pairs (`attn<i>` features)."""
    return sum(losses.masked_attention_kl(*_pair(v, s, t), v.labels)
               for s, t in _feature_pairs(student_feature, teacher_feature))


# --- contrastive (CRD) ----------------------------------------------------------------

CRD_NEGATIVES = ("auto", "other_class", "uniform")


def make_crd(v: Views, rngs, num_data, student_feature: str = "embedding",
             teacher_feature: str = "embedding", dim: int = 128, num_negatives: int = 4096,
             temperature: float = 0.07, momentum: float = 0.5, negatives: str = "auto", *,
             split_labels=None):
    """Embedding heads (trainable), the two memory banks (uniform rows, not normalised, as
    RepDistiller's ContrastMemory) with their normalisers, and for other-class negatives
    the training split's labels `split_labels` [num_data] (kept unchanged in the state)."""
    if negatives not in CRD_NEGATIVES:
        raise ValueError(f"negatives must be one of {CRD_NEGATIVES}, got {negatives!r}")
    if not 0 < num_negatives < num_data:
        raise ValueError(f"num_negatives must be in [1, {num_data - 1}] for a training split of "
                         f"{num_data} examples, got {num_negatives}")
    if negatives == "other_class" and split_labels is None:
        raise ValueError("negatives='other_class' needs the training split's labels, which this "
                         "run does not provide; use negatives='uniform' (or 'auto')")
    s, t = _pair(v, student_feature, teacher_feature)
    heads = nnx.Dict(student=Embed(math.prod(s.shape[1:]), dim, rngs=rngs),
                     teacher=Embed(math.prod(t.shape[1:]), dim, rngs=rngs))
    bank_keys = jax.random.split(rngs.params(), 2)
    state = {"student_bank": losses.crd_init_bank(bank_keys[0], num_data, dim),
             "teacher_bank": losses.crd_init_bank(bank_keys[1], num_data, dim),
             "student_z": jnp.float32(-1.0), "teacher_z": jnp.float32(-1.0)}
    if negatives != "uniform" and split_labels is not None:
        labels = np.asarray(split_labels)
        if labels.shape != (num_data,):
            raise ValueError(f"split_labels must hold one label per training example "
                             f"({num_data}), got shape {labels.shape}")
        most = losses.max_other_class_negatives(labels)
        if num_negatives > most:
            raise ValueError(f"num_negatives={num_negatives} exceeds the {most} examples outside "
                             "the largest class, the most that negatives='other_class' can draw "
                             "without replacement; use fewer or negatives='uniform'")
        state["split_labels"] = jnp.asarray(labels, jnp.int32)
    return heads, state


def crd(v: Views, student_feature: str = "embedding", teacher_feature: str = "embedding",
        dim: int = 128, num_negatives: int = 4096, temperature: float = 0.07,
        momentum: float = 0.5, negatives: str = "auto", *, aux: AuxIO):
    """Tian et al., "Contrastive Representation Distillation", ICLR 2020: the student
    embedding against the teacher bank plus the teacher embedding against the student bank,
    NCE with `num_negatives` negatives; banks updated by momentum after the step.

    negatives: 'other_class' draws each example's negatives from the examples of other
    classes, without replacement (the reference's `CIFAR100InstanceSample`; needs the
    training split's labels, given to `make_crd`); 'uniform' from all other examples, with
    replacement; 'auto' (default) is 'other_class' when the split's labels are given, else
    'uniform'."""
    s, t = _pair(v, student_feature, teacher_feature)
    es, et = aux.module["student"](s), aux.module["teacher"](t)
    idx, state = v.indices, aux.state
    if "split_labels" in state:
        neg = losses.sample_other_class_negatives(aux.rng, v.labels, state["split_labels"],
                                                  num_negatives)
    else:
        neg = losses.sample_negatives(aux.rng, es.shape[0], num_negatives, aux.num_data, idx)
    out_s = losses.crd_scores(es, state["teacher_bank"], idx, neg, temperature)
    out_t = losses.crd_scores(et, state["student_bank"], idx, neg, temperature)
    z_s = jnp.where(state["student_z"] > 0, state["student_z"],
                    losses.crd_normalizer(out_s, aux.num_data))
    z_t = jnp.where(state["teacher_z"] > 0, state["teacher_z"],
                    losses.crd_normalizer(out_t, aux.num_data))
    value = (losses.crd_nce_loss(out_s, z_s, aux.num_data)
             + losses.crd_nce_loss(out_t, z_t, aux.num_data))
    new_state = {**state,
                 "student_bank": losses.crd_update_bank(state["student_bank"], idx, es, momentum),
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
    "ce": TermSpec(ce, needs_teacher=False, logit_term=True),
    "kd": TermSpec(kd, logit_term=True),
    "fkl": TermSpec(fkl, logit_term=True),
    "rkl": TermSpec(rkl, logit_term=True),
    "jsd": TermSpec(jsd, logit_term=True),
    "tvd": TermSpec(tvd, logit_term=True),
    "skl": TermSpec(skl, logit_term=True),
    "srkl": TermSpec(srkl, logit_term=True),
    "dkd": TermSpec(dkd, logit_term=True),
    "uld": TermSpec(uld),
    "xtok_kl": TermSpec(xtok_kl),
    "hint": TermSpec(hint, make_aux=make_hint),
    "at": TermSpec(at),
    "sp": TermSpec(sp),
    "rkd": TermSpec(rkd),
    "pkt": TermSpec(pkt),
    "embed_cos": TermSpec(embed_cos),
    "embed_mse": TermSpec(embed_mse),
    "hidden_mse": TermSpec(hidden_mse),
    "attn_kl": TermSpec(attn_kl),
    "crd": TermSpec(crd, make_aux=make_crd, takes_split_labels=True),
    "adversarial": TermSpec(adversarial, make_aux=make_adversarial, own_optimizer=True),
}
