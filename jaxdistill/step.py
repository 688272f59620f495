"""The train and eval steps: pure functions of pytrees, compiled once by the trainer.

`train_step(ctx, state, teacher, batch)` runs the frozen teacher's forward pass and the
student's update in one program. `ctx` is static (graph definitions, objective,
optimizer, augmentation) and is bound with `functools.partial` before `jax.jit`; the
student state is donated; the teacher's variables are a separate, non-donated input
whose outputs pass through `stop_gradient`, so no teacher gradient is ever formed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdistill import augment
from jaxdistill.objective import PRIMARY, Objective
from jaxdistill.state import TrainState
from jaxdistill.store.dense import teacher_outputs_from_batch
from jaxdistill.terms import Views


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Static parts of the step."""

    student_def: Any
    teacher_def: Any | None
    objective: Objective
    tx: optax.GradientTransformation
    augment: augment.Augment
    extra_teacher_defs: Any = dataclasses.field(default_factory=dict)  # name -> graphdef
    store_classes: int = 0  # > 0: the teacher's outputs come from the batch (offline store)


def forward(graphdef, params, batch_stats, images, *, train: bool, rngs=None):
    """Runs a model from its split state; returns (logits, features, new batch stats)."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
    logits, features = model(images, train=train, rngs=rngs)
    return logits, features, nnx.state(model, nnx.BatchStat)


def teacher_outputs(ctx: StepContext, teacher, images):
    """The frozen teacher's logits and features (eval mode, no gradient), or (None, None)."""
    if ctx.teacher_def is None:
        return None, None
    logits, features, _ = forward(ctx.teacher_def, teacher["params"], teacher["batch_stats"],
                                  images, train=False)
    return jax.lax.stop_gradient((logits, features))


def all_teacher_outputs(ctx: StepContext, teacher, images, batch) -> dict:
    """{name: (logits, features)} of every teacher: the primary as 'teacher', then the
    extra teachers (`teacher['others']`), all frozen and without gradient; or the
    primary's outputs read from the batch when they come from an offline store."""
    if ctx.store_classes:
        return {PRIMARY: teacher_outputs_from_batch(batch, ctx.store_classes)}
    if ctx.teacher_def is None:
        return {}
    outputs = {PRIMARY: teacher_outputs(ctx, teacher, images)}
    for name, graphdef in ctx.extra_teacher_defs.items():
        variables = teacher["others"][name]
        logits, features, _ = forward(graphdef, variables["params"], variables["batch_stats"],
                                      images, train=False)
        outputs[name] = jax.lax.stop_gradient((logits, features))
    return outputs


def _agreement(student_logits, teacher_logits):
    return (jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)).astype(jnp.float32)


def _step_rngs(state_rng: jax.Array, step: jax.Array):
    """(augmentation, dropout, loss-term) keys of one step."""
    return jax.random.split(jax.random.fold_in(state_rng, step), 3)


def teacher_step(ctx: StepContext, state_rng, step, teacher, batch):
    """The step's augmented images and every teacher's outputs on them: the part of a
    train step that can run ahead, on the teacher's own devices."""
    images = augment.apply(ctx.augment, batch["image"], _step_rngs(state_rng, step)[0],
                           train=True)
    return images, all_teacher_outputs(ctx, teacher, images, batch)


def student_update(ctx: StepContext, state: TrainState, images, teachers, batch):
    """One update of the student (and aux params) from the step's augmented `images` and
    the teachers' outputs on them; returns (state, metrics)."""
    _, dropout_rng, term_rng = _step_rngs(state.rng, state.step)
    t_logits, t_features = teachers.get(PRIMARY, (None, None))

    def loss_fn(params):
        s_logits, s_features, new_stats = forward(
            ctx.student_def, params["student"], state.batch_stats, images, train=True,
            rngs=nnx.Rngs(dropout=dropout_rng))
        views = Views(s_logits, s_features, t_logits, t_features, batch["label"], batch["index"],
                      teachers)
        total, terms, aux_state = ctx.objective(views, state.step, params["aux"], state.aux_state,
                                                term_rng)
        return total, (terms, new_stats, aux_state, s_logits)

    (total, (terms, new_stats, aux_state, s_logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": total, **terms,
               "accuracy": jnp.mean(jnp.argmax(s_logits, -1) == batch["label"]),
               "grad_norm": optax.tree.norm(grads)}
    if t_logits is not None:
        metrics["agreement"] = jnp.mean(_agreement(s_logits, t_logits))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state, aux_state=aux_state)
    return new_state, metrics


def train_step(ctx: StepContext, state: TrainState, teacher, batch):
    """One step: teacher inference and the student's update in one program."""
    images, teachers = teacher_step(ctx, state.rng, state.step, teacher, batch)
    return student_update(ctx, state, images, teachers, batch)


def teacher_eval_logits(ctx: StepContext, teacher, batch):
    """The primary teacher's eval-mode logits on a batch, or None."""
    images = augment.apply(ctx.augment, batch["image"], None, train=False)
    return teacher_outputs(ctx, teacher, images)[0]


def eval_sums(ctx: StepContext, state: TrainState, teacher_logits, batch):
    """Sums over the real (mask = 1) examples of a batch: student and teacher correct
    predictions, student-teacher top-1 agreement, and the example count."""
    images = augment.apply(ctx.augment, batch["image"], None, train=False)
    s_logits, _, _ = forward(ctx.student_def, state.params["student"], state.batch_stats,
                             images, train=False)
    mask = batch["mask"]
    sums = {"count": jnp.sum(mask),
            "correct": jnp.sum(mask * (jnp.argmax(s_logits, -1) == batch["label"]))}
    if teacher_logits is not None:
        sums["teacher_correct"] = jnp.sum(
            mask * (jnp.argmax(teacher_logits, -1) == batch["label"]))
        sums["agree"] = jnp.sum(mask * _agreement(s_logits, teacher_logits))
    return sums


def eval_step(ctx: StepContext, state: TrainState, teacher, batch):
    """`eval_sums` with the teacher run in the same program."""
    return eval_sums(ctx, state, teacher_eval_logits(ctx, teacher, batch), batch)
