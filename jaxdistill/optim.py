"""Optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")


def learning_rate_schedule(opt, num_steps: int) -> optax.Schedule:
    """Linear warm-up to `opt.learning_rate`, then cosine to 0, constant, or step decay."""
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule '{opt.schedule}' is unknown; "
                         f"choose one of {SCHEDULES}")
    if opt.learning_rate <= 0:
        raise ValueError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}")
    warmup = int(opt.warmup_steps)
    rest = max(1, num_steps - warmup)
    if opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(opt.learning_rate, rest)
    elif opt.schedule == "constant":
        main = optax.constant_schedule(opt.learning_rate)
    else:
        main = optax.piecewise_constant_schedule(
            opt.learning_rate, {int(f * num_steps) - warmup: 0.1 for f in opt.decay_fractions})
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup), main],
                                [warmup])


def _is_matrix(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt, num_steps: int, own: dict[str, float] | None = None, *,
                   schedule: optax.Schedule | None = None, weight_decay=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for the trainable params {'student', 'aux': {term: ...}},
    and its schedule. Aux terms named in `own` (term -> learning rate) get their own
    `adam(lr, b1=0.5)` (the GAN convention for discriminators) instead of the main one.
    `schedule` and `weight_decay` (which may be traced: a population member's, see
    `jaxdistill.population`) replace `opt`'s; `opt.weight_decay` still decides whether SGD
    decays at all."""
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name '{opt.name}' is unknown; choose one of {OPTIMIZERS}")
    if opt.weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {opt.weight_decay}")
    schedule = learning_rate_schedule(opt, num_steps) if schedule is None else schedule
    decay = opt.weight_decay if weight_decay is None else weight_decay
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    if opt.name == "sgd":
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(decay, mask=_is_matrix))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "adam":
        parts.append(optax.adam(schedule, b1=opt.momentum))
    else:
        parts.append(optax.adamw(schedule, b1=opt.momentum, weight_decay=decay,
                                 mask=_is_matrix))
    main = optax.chain(*parts)
    if not own:
        return main, schedule

    def labels(params):
        aux = {k: jax.tree.map(lambda _, k=k: k if k in own else "main", v)
               for k, v in params["aux"].items()}
        return {"student": jax.tree.map(lambda _: "main", params["student"]), "aux": aux}
    transforms = {"main": main, **{k: optax.adam(lr, b1=0.5) for k, lr in own.items()}}
    return optax.multi_transform(transforms, labels), schedule
