"""Weight pruning of the student: magnitude pruning on the gradual cubic schedule of Zhu &
Gupta (2017, "To prune, or not to prune"), globally or per layer, and N:M structured sparsity
(e.g. 2:4, the pattern of sparse tensor cores; Mishra et al. 2021, Zhou et al. 2021).

Configured by `config.student.pruning` (see `jaxdistill.defaults`). The masks are a dict
{parameter path: bool array} in `TrainState.masks`, checkpointed with the run. Every train
step (`jaxdistill.step.student_update`):
  1. at a due step (`due`), recomputes the masks from the current weights at the schedule's
     target sparsity (`target_sparsity`), and applies them;
  2. masks the gradients, so no pruned weight gets an update direction;
  3. after the optimizer update, masks the parameters and the optimizer's moments of the
     pruned weights (`mask_like_params`): pruned weights are exactly zero after every step,
     and a pruned weight's momentum is zero.
Pruned weights are zero, so they rank lowest at the next mask update: a pruned weight stays
pruned. Prunable parameters are the leaves named in `pruning.params` (default: 'kernel', the
weights of dense and conv layers; not biases, norms or embeddings) with at least 2 axes. For a
model that declares its `KERNELS` ({name: input axis}; the decoder LM: its blocks' projections
q, k, v, o and MLP gate, up, down), 'kernel' stands for those; its embedding and output head
stay dense (as in SparseGPT and Wanda), and N:M groups run along each kernel's declared input
axis (the attention output o [heads, head_dim, dim]: along head_dim, the fast axis of its
flattened fan-in).

Written here rather than taken from jaxpruner: jaxpruner does not install beside the pinned
stack of this project.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

METHODS = ("none", "magnitude", "nm")
SCOPES = ("global", "layer")


@dataclasses.dataclass(frozen=True)
class PruningSpec:
    """`config.student.pruning`, resolved (static: part of the step's context)."""

    method: str
    sparsity: float
    initial_sparsity: float
    scope: str
    start_step: int
    end_step: int
    frequency: int
    n: int
    m: int
    params: tuple[str, ...]
    input_axes: tuple[tuple[str, int], ...] = ()  # (name, input axis) where it is not -2

    def input_axis(self, name: str) -> int:
        """The axis of parameter `name` that N:M groups run along (its input features)."""
        return dict(self.input_axes).get(name, -2)


def spec(config) -> PruningSpec | None:
    """The run's pruning, or None when `config.student.pruning.method` is 'none'; 'kernel' in
    `params` resolved to the student's declared `KERNELS` where its class has them."""
    from jaxdistill.quantization import declared_kernels
    p = config.student.pruning
    if p.method == "none":
        return None
    declared = declared_kernels(config.student.model, config.student.kwargs) or {}
    names = tuple(dict.fromkeys(
        resolved for name in p.params
        for resolved in (declared if name == "kernel" and declared else (name,))))
    return PruningSpec(p.method, float(p.sparsity), float(p.initial_sparsity), p.scope,
                       int(p.start_step), int(p.end_step), int(p.frequency), int(p.n), int(p.m),
                       names, tuple((n, declared[n]) for n in names if n in declared))


def check_config(config) -> None:
    """One-line ValueError naming the `config.student.pruning` field that is out of range."""
    p, f = config.student.pruning, "config.student.pruning"
    if p.method not in METHODS:
        raise ValueError(f"{f}.method '{p.method}' is unknown; choose one of {METHODS}")
    if p.method == "none":
        return
    for name in ("sparsity", "initial_sparsity"):
        if not 0.0 <= p[name] < 1.0:
            raise ValueError(f"{f}.{name} must be in [0, 1) (the fraction of prunable weights "
                             f"set to zero), got {p[name]}")
    if p.initial_sparsity > p.sparsity:
        raise ValueError(f"{f}.initial_sparsity ({p.initial_sparsity}) is above {f}.sparsity "
                         f"({p.sparsity}); the schedule only prunes more over time")
    if p.scope not in SCOPES:
        raise ValueError(f"{f}.scope '{p.scope}' is unknown; choose one of {SCOPES}")
    if p.frequency < 1:
        raise ValueError(f"{f}.frequency must be >= 1 (steps between mask updates), got "
                         f"{p.frequency}")
    if not 0 <= p.start_step <= p.end_step:
        raise ValueError(f"{f}: need 0 <= start_step <= end_step, got start_step="
                         f"{p.start_step}, end_step={p.end_step}")
    if p.end_step >= config.num_steps:
        raise ValueError(f"{f}.end_step ({p.end_step}) must be below config.num_steps "
                         f"({config.num_steps}): the final sparsity is reached at end_step")
    if p.method == "nm" and not 0 < p.n < p.m:
        raise ValueError(f"{f}: N:M sparsity needs 0 < n < m, got n={p.n}, m={p.m}")
    if not p.params:
        raise ValueError(f"{f}.params is empty; name the parameters to prune, e.g. ('kernel',)")


def _key(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _name(key: str) -> str:
    """A parameter's own name: the last path component before Flax's 'value' level."""
    return key.removesuffix("/value").rsplit("/", 1)[-1]


def prunable(params, names) -> dict:
    """{path: leaf} of the leaves of the student's `params` that pruning `names` (the
    `pruning.params` field) selects: those of these names with 2 or more axes."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_key(p): x for p, x in leaves if _name(_key(p)) in names and len(x.shape) >= 2}


def select(tree, keys) -> dict:
    """{path: leaf} of the leaves of `tree` (the student's params, or their shardings) at
    the paths `keys`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key(p): x for p, x in leaves if _key(p) in keys}


def check_layers(s: PruningSpec | None, params) -> None:
    """ValueError naming the field when `s` prunes nothing or N:M does not divide a layer's
    input axis (the groups of m run along a kernel's input features: `PruningSpec.input_axis`)."""
    if s is None:
        return
    leaves = prunable(params, s.params)
    f = "config.student.pruning"
    if not leaves:
        raise ValueError(f"{f}.params {s.params}: the student has no parameter of those names "
                         "with 2 or more axes to prune")
    if s.method == "nm":
        for key, x in leaves.items():
            inputs = x.shape[s.input_axis(_name(key))]
            if inputs % s.m:
                raise ValueError(f"{f}.m={s.m} does not divide the input axis of '{key}' "
                                 f"(shape {tuple(x.shape)}: {inputs} inputs); choose an m "
                                 f"that divides every pruned layer or leave it out of {f}.params")


def init_masks(s: PruningSpec | None, params):
    """All-True masks of the prunable leaves (dense until the schedule starts); None."""
    if s is None:
        return None
    return {k: jnp.ones(x.shape, jnp.bool_) for k, x in prunable(params, s.params).items()}


def target_sparsity(s: PruningSpec, step):
    """Zhu & Gupta (2017), eq. 1: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, with
    t0 = start_step, t0 + n dt = end_step and t clipped to [t0, t0 + n dt]."""
    span = s.end_step - s.start_step
    if not span:
        return jnp.float32(s.sparsity)
    frac = (jnp.clip(step, s.start_step, s.end_step) - s.start_step) / span
    return jnp.float32(s.sparsity + (s.initial_sparsity - s.sparsity) * (1.0 - frac) ** 3)


def due(s: PruningSpec, step):
    """Whether the masks are recomputed at `step`: every `frequency` steps from start_step
    to end_step, and at end_step."""
    inside = (step >= s.start_step) & (step <= s.end_step)
    return inside & (((step - s.start_step) % s.frequency == 0) | (step == s.end_step))


def keep_largest(scores, sparsity):
    """bool mask of `scores` (1-D) False at the round(sparsity * N) smallest (ties broken by
    position) and True elsewhere."""
    n = scores.shape[0]
    k = jnp.round(sparsity * n).astype(jnp.int32)
    order = jnp.argsort(scores, stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= k


def magnitude_masks(weights: dict, sparsity, scope: str) -> dict:
    """Masks pruning the smallest-|w| fraction `sparsity` of `weights` ({path: array}): of
    all of them together ('global': one threshold) or of each on its own ('layer')."""
    scores = {k: jnp.abs(w).astype(jnp.float32).ravel() for k, w in weights.items()}
    if scope == "layer":
        return {k: keep_largest(v, sparsity).reshape(weights[k].shape) for k, v in scores.items()}
    keep = keep_largest(jnp.concatenate(list(scores.values())), sparsity)
    out, start = {}, 0
    for k, v in scores.items():
        out[k] = keep[start:start + v.size].reshape(weights[k].shape)
        start += v.size
    return out


def nm_mask(w, n: int, m: int, axis: int = -2):
    """The N:M mask of a kernel: in each group of `m` consecutive weights along its input
    `axis`, the `n` largest |w| are kept (ties broken by position)."""
    x = jnp.moveaxis(jnp.abs(w).astype(jnp.float32), axis, -1)
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // m, m)
    rank = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1)
    return jnp.moveaxis((rank < n).reshape(x.shape), -1, axis)


def new_masks(s: PruningSpec, params, step) -> dict:
    """The masks `s` gives the student's current `params` at `step`."""
    weights = prunable(params, s.params)
    if s.method == "nm":
        return {k: nm_mask(w, s.n, s.m, s.input_axis(_name(k))) for k, w in weights.items()}
    return magnitude_masks(weights, target_sparsity(s, step), s.scope)


def apply_masks(params, masks):
    """The student's `params` with the masked leaves zeroed (unchanged for masks None)."""
    if masks is None:
        return params

    def zero(path, x):
        mask = masks.get(_key(path))
        return x if mask is None else jnp.where(mask, x, jnp.zeros_like(x))
    return jax.tree_util.tree_map_with_path(zero, params)


def mask_trainable(tree, masks):
    """`apply_masks` on the student part of a trainable-shaped tree (params, gradients)."""
    return tree if masks is None else {**tree, "student": apply_masks(tree["student"], masks)}


def mask_like_params(opt_state, masks):
    """The optimizer state with its per-parameter leaves (moments: paths ending in
    'student/<pruned path>', same shape) of pruned weights zeroed."""
    if masks is None:
        return opt_state
    by_suffix = {f"student/{k}": m for k, m in masks.items()}

    def zero(path, x):
        key = _key(path)
        for suffix, mask in by_suffix.items():
            if key.endswith(suffix) and getattr(x, "shape", None) == mask.shape:
                return jnp.where(mask, x, jnp.zeros_like(x))
        return x
    return jax.tree_util.tree_map_with_path(zero, opt_state)


def prune(s: PruningSpec | None, trainable, masks, step):
    """(trainable params with the masks applied, masks): the masks recomputed first when
    `step` is due (`lax.cond`: nothing is sorted on the other steps)."""
    if s is None:
        return trainable, masks
    masks = jax.lax.cond(due(s, step), lambda: new_masks(s, trainable["student"], step),
                         lambda: masks)
    return mask_trainable(trainable, masks), masks


def sparsity(masks):
    """The fraction of pruned weights over every mask."""
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(jnp.count_nonzero(m) for m in masks.values()) / total
