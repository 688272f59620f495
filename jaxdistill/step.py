"""The train and eval steps: pure functions of pytrees, compiled once by the trainer.

`train_step(ctx, state, teacher, batch)` runs the frozen teacher's forward pass and the
student's update in one program. `ctx` is static (graph definitions, objective,
optimizer, task) and is bound with `functools.partial` before `jax.jit`; the student
state is donated; the teacher's variables are a separate, non-donated input whose
outputs pass through `stop_gradient`, so no teacher gradient is ever formed.

What the models are called on, the targets and the per-position weights come from the
task (`jaxdistill.tasks`). With `ctx.chunk_size > 0` (language models) the models return
their final hidden states instead of logits and the objective applies each model's output
head chunk by chunk over the sequence (`jaxdistill.losses.chunked`). With `ctx.pruning` the
student's masks (`TrainState.masks`) are updated on schedule and applied to its weights,
gradients and optimizer moments (`jaxdistill.pruning`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from flax import nnx

from jaxdistill import pruning
from jaxdistill.losses.chunked import HIDDEN, Head, LogitChunks
from jaxdistill.objective import PRIMARY, Objective
from jaxdistill.state import TrainState
from jaxdistill.store.dense import teacher_outputs_from_batch
from jaxdistill.store.tokens import entries_from_batch
from jaxdistill.tasks.base import ModelInputs, Task
from jaxdistill.terms import Views


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Static parts of the step."""

    student_def: Any
    teacher_def: Any | None
    objective: Objective
    tx: optax.GradientTransformation
    task: Task
    extra_teacher_defs: Any = dataclasses.field(default_factory=dict)  # name -> graphdef
    store_classes: int = 0  # > 0: the teacher's outputs come from the batch (offline store)
    chunk_size: int = 0  # > 0: logit terms chunk by chunk over the sequence (see module doc)
    attention_maps: bool = False  # the models also return attention maps (a term uses them)
    token_store: bool = False  # the teacher's top-k entries come from the batch (LM token store)
    pruning: Any = None  # a jaxdistill.pruning.PruningSpec: masks kept in TrainState.masks
    onpolicy: Any = None  # a jaxdistill.onpolicy.OnPolicy: completions sampled from the student

    def call_kwargs(self, inputs: ModelInputs, *, chunked: bool) -> dict:
        """Keyword arguments of a model call on `inputs`."""
        kwargs = dict(inputs.kwargs)
        if self.attention_maps:
            kwargs["attention_maps"] = True
        if chunked:
            kwargs["logits"] = False
        return kwargs


def forward(graphdef, params, batch_stats, x, *, train: bool, rngs=None, **kwargs):
    """Runs a model from its split state; returns (logits, features, new batch stats)."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
    logits, features = model(x, train=train, rngs=rngs, **kwargs)
    return logits, features, nnx.state(model, nnx.BatchStat)


def output_head(graphdef, params, batch_stats) -> Head:
    """The model's output head (`logits_from_hidden`) as a pure function of its params."""
    def apply(variables, hidden):
        model = nnx.merge(graphdef, variables["params"], variables["batch_stats"], copy=True)
        return model.logits_from_hidden(hidden)
    return Head(apply, {"params": params, "batch_stats": batch_stats})


def _run(ctx: StepContext, graphdef, variables, inputs: ModelInputs, *, train: bool,
         chunked: bool, rngs=None):
    return forward(graphdef, variables["params"], variables["batch_stats"], inputs.x,
                   train=train, rngs=rngs, **ctx.call_kwargs(inputs, chunked=chunked))


def teacher_outputs(ctx: StepContext, teacher, x, **kwargs):
    """The frozen primary teacher's (logits, features) on model input `x`, in eval mode and
    without gradient."""
    logits, features, _ = forward(ctx.teacher_def, teacher["params"], teacher["batch_stats"], x,
                                  train=False, **kwargs)
    return jax.lax.stop_gradient((logits, features))


def all_teacher_outputs(ctx: StepContext, teacher, inputs: ModelInputs, batch, *,
                        full_logits: bool = False) -> dict:
    """{name: (logits, features)} of every teacher: the primary as 'teacher', then the
    extra teachers (`teacher['others']`), all frozen and without gradient; or the
    primary's outputs read from the batch when they come from an offline store. In a
    chunked step the primary's logits are None and its features hold its final hidden
    states (its head is applied by the objective), unless `full_logits`."""
    if ctx.store_classes:
        return {PRIMARY: teacher_outputs_from_batch(batch, ctx.store_classes)}
    if ctx.token_store:  # no logits: the terms read `entries_from_batch(batch)`
        return {PRIMARY: (None, {})}
    if ctx.teacher_def is None:
        return {}
    outputs = {}
    inputs = _teacher_inputs(ctx.task, inputs, batch)
    for name, graphdef in {PRIMARY: ctx.teacher_def, **ctx.extra_teacher_defs}.items():
        variables = teacher if name == PRIMARY else teacher["others"][name]
        logits, features, _ = _run(ctx, graphdef, variables, inputs, train=False,
                                   chunked=ctx.chunk_size > 0 and name == PRIMARY
                                   and not full_logits)
        outputs[name] = jax.lax.stop_gradient((logits, features))
    if hasattr(ctx.task, "align_teacher"):  # teacher positions -> the student's
        outputs[PRIMARY] = ctx.task.align_teacher(outputs[PRIMARY], batch)
    return outputs


def _teacher_inputs(task: Task, inputs: ModelInputs, batch) -> ModelInputs:
    """What the teachers are called on: the student's inputs, or the task's own teacher
    inputs (a teacher with another tokenizer: `tasks.cross_tokenizer`)."""
    return task.teacher_inputs(batch) if hasattr(task, "teacher_inputs") else inputs


def _step_rngs(state_rng: jax.Array, step: jax.Array):
    """(augmentation, dropout, loss-term) keys of one step."""
    return jax.random.split(jax.random.fold_in(state_rng, step), 3)


def teacher_step(ctx: StepContext, state_rng, step, teacher, batch, *,
                 full_logits: bool = False):
    """The step's model inputs (augmented images, tokens) and every teacher's outputs on
    them: the part of a train step that can run ahead, on the teacher's own devices (which
    then send their full logits: `full_logits`)."""
    inputs = ctx.task.inputs(batch, _step_rngs(state_rng, step)[0], train=True)
    return inputs, all_teacher_outputs(ctx, teacher, inputs, batch, full_logits=full_logits)


def _chunks(ctx: StepContext, student_head: Head, s_features, t_logits, t_features, teacher,
            batch) -> LogitChunks:
    """The chunked logit terms' inputs: hidden states, heads, targets and weights."""
    t_head = None
    if t_logits is None and teacher is not None:  # the teacher's head runs chunk by chunk
        t_head = output_head(ctx.teacher_def, teacher["params"], teacher["batch_stats"])
    return LogitChunks(
        student_hidden=s_features[HIDDEN], student_head=student_head,
        teacher_hidden=t_features[HIDDEN] if t_head is not None else None,
        teacher_head=t_head, teacher_logits=t_logits,
        targets=ctx.task.targets(batch), weights=ctx.task.weights(batch), size=ctx.chunk_size,
        teacher_entries=entries_from_batch(batch) if ctx.token_store else None)


def student_update(ctx: StepContext, state: TrainState, inputs: ModelInputs, teachers, batch,
                   teacher=None):
    """One update of the student (and aux params) from the step's model `inputs` and the
    teachers' outputs on them; returns (state, metrics). `teacher` (its variables) is
    needed only by a chunked step whose teacher logits are not in `teachers`."""
    _, dropout_rng, term_rng = _step_rngs(state.rng, state.step)
    t_logits, t_features = teachers.get(PRIMARY, (None, None))
    chunked = ctx.chunk_size > 0
    trainable, masks = pruning.prune(ctx.pruning, state.params, state.masks, state.step)

    def loss_fn(params):
        s_logits, s_features, new_stats = forward(
            ctx.student_def, params["student"], state.batch_stats, inputs.x, train=True,
            rngs=nnx.Rngs(dropout=dropout_rng), **ctx.call_kwargs(inputs, chunked=chunked))
        chunks = None
        if chunked:
            head = output_head(ctx.student_def, params["student"], new_stats)
            chunks = _chunks(ctx, head, s_features, t_logits, t_features, teacher, batch)
        views = Views(s_logits, s_features, t_logits, t_features, ctx.task.targets(batch),
                      batch["index"], teachers, ctx.task.weights(batch), chunks,
                      entries_from_batch(batch) if ctx.token_store and not chunked else None)
        total, values, aux_state = ctx.objective(views, state.step, params["aux"],
                                                 state.aux_state, term_rng)
        return total, (values, new_stats, aux_state)

    (total, (values, new_stats, aux_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(trainable)
    grads = pruning.mask_trainable(grads, masks)  # pruned weights get no update direction
    updates, opt_state = ctx.tx.update(grads, state.opt_state, trainable)
    params = pruning.mask_trainable(optax.apply_updates(trainable, updates), masks)
    opt_state = pruning.mask_like_params(opt_state, masks)
    metrics = {"loss": total, **values, "grad_norm": optax.tree.norm(grads)}
    if masks is not None:
        metrics["sparsity"] = pruning.sparsity(masks)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state, aux_state=aux_state, masks=masks)
    return new_state, metrics


def train_step(ctx: StepContext, state: TrainState, teacher, batch):
    """One step: teacher inference and the student's update in one program (on-policy:
    the student's sampling first, `jaxdistill.onpolicy`)."""
    sampled = {}
    if ctx.onpolicy is not None:
        batch, sampled = ctx.onpolicy.batch(ctx.student_def, state, batch)
    inputs, teachers = teacher_step(ctx, state.rng, state.step, teacher, batch)
    state, metrics = student_update(ctx, state, inputs, teachers, batch, teacher)
    return state, {**metrics, **sampled}


def eval_output(task: Task, logits, features):
    """What the task's eval compares: the logits, or the feature it names as its
    `eval_feature` (an encoder's sentence embedding)."""
    name = getattr(task, "eval_feature", None)
    return logits if name is None else features[name]


def teacher_eval_logits(ctx: StepContext, teacher, batch):
    """The primary teacher's eval-mode logits (or `eval_output`) on a batch, or None."""
    if ctx.teacher_def is None:
        return None
    inputs = _teacher_inputs(ctx.task, ctx.task.inputs(batch, None, train=False), batch)
    logits, features, _ = _run(ctx, ctx.teacher_def, teacher, inputs, train=False,
                               chunked=False)
    return jax.lax.stop_gradient(eval_output(ctx.task, logits, features))


def eval_sums(ctx: StepContext, state: TrainState, teacher_logits, batch):
    """The task's sums over one eval batch (student and, given its logits, teacher)."""
    inputs = ctx.task.inputs(batch, None, train=False)
    s_logits, s_features, _ = forward(ctx.student_def, state.params["student"],
                                      state.batch_stats, inputs.x, train=False, **inputs.kwargs)
    return ctx.task.eval_sums(eval_output(ctx.task, s_logits, s_features), teacher_logits, batch)


def eval_step(ctx: StepContext, state: TrainState, teacher, batch):
    """`eval_sums` with the teacher run in the same program."""
    return eval_sums(ctx, state, teacher_eval_logits(ctx, teacher, batch), batch)
