"""The interface every task implements (see `jaxdistill.tasks`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxdistill.losses.sparse_kd import teacher_top1


class ModelInputs(NamedTuple):
    """What a model is called on: `model(x, train=..., rngs=..., **kwargs)`."""

    x: jax.Array
    kwargs: Mapping[str, jax.Array]


def top1_agreement(student_logits, teacher_logits) -> jax.Array:
    """1.0 where the two models' top-1 predictions agree, per example / position."""
    return (jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)).astype(jnp.float32)


def top1_correct(logits, targets) -> jax.Array:
    """1.0 where the top-1 prediction is the target, per example / position."""
    return (jnp.argmax(logits, -1) == targets).astype(jnp.float32)


def agreement(v) -> jax.Array:
    """`top1_agreement` of the step's views, the teacher's top-1 read from a token store's
    entries (stored largest first) when it has no logits."""
    if v.teacher_entries is None:
        return top1_agreement(v.student_logits, v.teacher_logits)
    return top1_correct(v.student_logits, teacher_top1(v.teacher_entries))


def train_metrics(has_teacher: bool) -> dict[str, Callable[[Any], jax.Array]]:
    """Top-1 accuracy on the targets and (with a teacher) top-1 agreement with it, as
    per-position functions of the step's `Views`."""
    metrics = {"accuracy": lambda v: top1_correct(v.student_logits, v.labels)}
    if has_teacher:
        metrics["agreement"] = agreement
    return metrics


class Task(Protocol):
    """A task: class attributes say what it is, methods say what it does with a batch."""

    name: ClassVar[str]
    input_kind: ClassVar[str]   # the registry's INPUT_KIND of the models it runs
    model_kind: ClassVar[str]   # registry.model_kind of those models: image, decoder, encoder
    input_dtype: ClassVar[Any]  # dtype of the models' input x
    unit: ClassVar[str]         # what throughput counts: 'examples' | 'tokens'
    best_metric: ClassVar[str]  # the eval metric that ranks checkpoints
    best_mode: ClassVar[str]    # 'max' | 'min' of `best_metric`
    terms: ClassVar[frozenset[str] | None] = None  # loss terms it supports (None: all)

    def prepare_data(self, data_cfg):
        """The prepared dataset's `DatasetInfo` (built offline where that is possible)."""
        ...

    def model_io(self, info) -> tuple[int, tuple[int, ...]]:
        """(num_classes, per-example input shape) that `build_model` receives."""
        ...

    def abstract_batch(self, info, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The train batch's fields as the reader yields them."""
        ...

    def inputs(self, batch: Mapping, rng: jax.Array | None, *, train: bool) -> ModelInputs:
        """What teacher and student are called on (the same for both)."""
        ...

    def targets(self, batch: Mapping) -> jax.Array:
        """Hard targets: labels [B] or next tokens [B, L]."""
        ...

    def weights(self, batch: Mapping) -> jax.Array:
        """Per-position weights of the objective's weighted mean, shaped like `targets`."""
        ...

    def train_metrics(self, has_teacher: bool) -> dict[str, Callable[[Any], jax.Array]]:
        """name -> per-position function of the step's `Views` (weighted means, no grad)."""
        ...

    def eval_sums(self, student_logits, teacher_logits, batch: Mapping) -> dict[str, jax.Array]:
        """Sums over one eval batch's real positions (added up over batches)."""
        ...

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The eval metrics from the summed `eval_sums` of a whole split."""
        ...

    def items_per_step(self, batch_size: int, info) -> int:
        """Units of `unit` in one train batch (for examples/s or tokens/s)."""
        ...
