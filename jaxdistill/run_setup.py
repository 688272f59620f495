"""Everything a run needs, resolved and validated before anything compiles.

`prepare_run(config)` checks the config (model, loss and dataset names, class counts,
dtypes, batch sizes, the teacher checkpoint's existence and fit), builds the models and
the train state abstractly (`nnx.eval_shape` / `jax.eval_shape`), derives every
sharding from those shapes and the config's rules, and traces the train step once
abstractly so that a loss term that cannot work with these models fails here, with a
`ValueError` naming the field. It writes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxdistill import checkpoint, data, onpolicy, parallel, pruning, quantization, seqkd, validate
from jaxdistill import store as store_lib
from jaxdistill.flops import dot_conv_flops, program_flops
from jaxdistill.hf import check_teacher as check_hf_teacher
from jaxdistill.hf import params as hf_params
from jaxdistill.losses.chunked import check_chunk_size
from jaxdistill.models import build_model, logical_axes
from jaxdistill.objective import MEAN, PRIMARY, build_objective
from jaxdistill.optim import make_optimizer
from jaxdistill.state import TrainState
from jaxdistill.step import StepContext, all_teacher_outputs, forward, train_step
from jaxdistill.store import tokens as store_tokens
from jaxdistill.tasks import Task, task_class
from jaxdistill.terms import Views

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class RunSetup:
    config: Any
    info: data.DatasetInfo
    mesh: Mesh
    ctx: StepContext
    schedule: Any
    init_state: Any                 # rng -> TrainState (jit with out_shardings=state_shardings)
    abstract_state: TrainState      # ShapeDtypeStructs carrying their shardings
    state_shardings: TrainState
    teacher_abstract: dict | None   # {'params', 'batch_stats'} ShapeDtypeStructs with shardings
    batch_sharding: NamedSharding
    store: Any = None  # the offline teacher store, if used (a StoreLayout or TokenStoreLayout)
    teacher_mesh: Mesh | None = None  # the teacher's own devices (config.mesh.teacher_devices)

    @property
    def task(self) -> Task:
        return self.ctx.task

    @property
    def teacher_input_abstract(self) -> dict | None:
        """The teacher variables the jitted step takes (none when reading a store)."""
        return None if self.store is not None else self.teacher_abstract

    def abstract_batch(self, batch_size: int | None = None) -> dict:
        """The train batch's fields (plus the store's, when the teacher comes from one)."""
        return abstract_batch(self.task, self.info, batch_size or self.config.batch_size,
                              self.store)


def _dtype(value: str, field: str):
    if value not in DTYPES:
        raise ValueError(f"{field} '{value}' is unknown; choose one of {sorted(DTYPES)}")
    return DTYPES[value]


def _num_classes(role_cfg, field: str, info: data.DatasetInfo) -> int:
    n = int(role_cfg.num_classes) or info.num_classes
    if n != info.num_classes and info.kind == "tokens":
        raise ValueError(f"{field}.num_classes: a vocabulary of {n} differs from the "
                         f"{info.num_classes} tokens of the dataset's tokenizer ({info.tokenizer});"
                         " teacher and student share that tokenizer: set it to 0")
    if n != info.num_classes:
        raise ValueError(f"{field}.num_classes is {n} but the dataset has {info.num_classes} "
                         f"classes; set it to 0 (use the dataset's) or {info.num_classes}")
    return n


def model_factory(role_cfg, field: str, num_classes: int, input_shape, dtype, task=None):
    """`make(rngs)` for the configured model; its name, kwargs and (given the `task`) input
    kind are checked here."""
    kwargs = dict(role_cfg.kwargs)
    if task is not None and role_cfg.model:
        validate.check_model(role_cfg.model, f"{field}.model", task)

    def make(rngs):
        return build_model(role_cfg.model, num_classes=num_classes, input_shape=input_shape,
                           rngs=rngs, dtype=dtype, **kwargs)
    try:
        nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{field}.model: {e}") from None
    return make


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _state_shardings(abstract: TrainState, mesh: Mesh, rule: str, named: dict,
                     overrides, field: str) -> TrainState:
    """Shardings of the student's train state under `rule` (the parameters' logical names
    `named`, by path under 'student', also name their optimizer moments)."""
    rep = parallel.replicated(mesh)
    named = {("student", *path): names for path, names in named.items()}

    def shard(tree):
        return parallel.tree_shardings(tree, mesh, rule, named, overrides, field)
    params = shard(abstract.params)
    masks = (None if abstract.masks is None  # a mask is sharded like its parameter
             else pruning.select(params["student"], abstract.masks))
    return TrainState(step=rep, rng=rep, aux_state=shard(abstract.aux_state), params=params,
                      batch_stats=shard(abstract.batch_stats),
                      opt_state=shard(abstract.opt_state), masks=masks)


def prepare_run(config, *, teacher_checkpoint_required: bool = True,
                info: data.DatasetInfo | None = None,
                store: store_lib.StoreLayout | None = None) -> RunSetup:
    """Validates `config` and resolves every static piece of the run (see module doc).
    `info` stands in for the prepared dataset and `store` for config.teacher.store's
    (benchmarks on synthetic data: the teacher's outputs then come with the batch)."""
    validate.check_config(config)  # every field's name, type and range, before anything else
    if config.num_steps <= 0:
        raise ValueError(f"config.num_steps must be > 0, got {config.num_steps}")
    for field in ("log_every", "eval_every", "checkpoint_every"):
        if config[field] < 0:
            raise ValueError(f"config.{field} must be >= 0, got {config[field]}")
    task = task_class(config.task)(config)
    info = info or validate.prepared_data(task, config)  # task.prepare_data, OSError named
    validate.check_data(config, info)  # splits, reader, batch size, channels
    mesh, teacher_mesh = _meshes(config)
    data_size = np.lcm(parallel.batch_shards(mesh), parallel.batch_shards(teacher_mesh))
    for field in ("batch_size", "eval_batch_size"):
        if config[field] <= 0 or config[field] % data_size:
            raise ValueError(f"config.{field} ({config[field]}) must be a positive multiple of the "
                             f"meshes' data-like axes ({data_size} devices)")
    has_teacher = bool(config.teacher.model)
    objective = build_objective(config.objective, has_teacher=has_teacher, task=task)
    if has_teacher and not objective.needs_teacher:
        raise ValueError("config.objective has no term that uses the teacher; add e.g. "
                         "kd=dict(weight=1.0) or set config.teacher.model = ''")
    classes = _num_classes(config.student, "config.student", info)
    make_student = model_factory(config.student, "config.student", classes,
                                 task.model_io(info)[1],
                                 _dtype(config.student.dtype, "config.student.dtype"), task)
    make_student = quantization.qat_factory(make_student, config.student.quantization,
                                            task.model_io(info)[1], task.input_dtype)
    student_def, s_params, s_stats = nnx.split(
        nnx.eval_shape(lambda: make_student(nnx.Rngs(0))), nnx.Param, nnx.BatchStat)
    s_vars = {"params": s_params, "batch_stats": s_stats}
    _check_student_hf(config.student, s_params)
    prune = pruning.spec(config)
    pruning.check_layers(prune, s_params)

    teacher_def = teacher_abstract = None
    extra_defs = {}
    if has_teacher:
        teacher_def, teacher_abstract = _teacher(config.teacher, "config.teacher", task, info,
                                                 teacher_mesh, config.mesh.teacher_rule,
                                                 config.mesh.teacher_axis_rules)
        if not (config.teacher.checkpoint or config.teacher.hf_checkpoint) and \
                teacher_checkpoint_required:
            raise ValueError("config.teacher.checkpoint is empty; point it at a teacher run's "
                             "workdir (train one with a config whose teacher.model is '')")
        others = {}
        for name, raw in config.extra_teachers.items():
            if name in (PRIMARY, MEAN):
                raise ValueError(f"config.extra_teachers.{name}: '{name}' is a reserved name")
            t_cfg = ml_collections.ConfigDict({"kwargs": {}, "dtype": "float32", "num_classes": 0,
                                               "checkpoint": "", **dict(raw)})
            extra_defs[name], others[name] = _teacher(
                t_cfg, f"config.extra_teachers.{name}", task, info, teacher_mesh,
                config.mesh.teacher_rule)
            if not t_cfg.checkpoint:
                raise ValueError(f"config.extra_teachers.{name}.checkpoint is empty")
        if others:
            teacher_abstract = {**teacher_abstract, "others": others}
    elif config.extra_teachers:
        raise ValueError("config.extra_teachers needs a primary config.teacher.model")
    teacher_store = (store or _open_store(config)) if has_teacher else None
    token_store = isinstance(teacher_store, store_tokens.TokenStoreLayout)
    if token_store:
        store_tokens.check_run(config, teacher_store, info)
    if teacher_mesh is not mesh and not (has_teacher and teacher_store is None):
        raise ValueError("config.mesh.teacher_devices needs a teacher that runs online "
                         "(a teacher.model, and no teacher.store)")

    chunk_size = _chunk_size(config, task, info, extra_defs, teacher_store)
    ctx = StepContext(student_def, None if teacher_store else teacher_def, None, None, task,
                      extra_defs, info.num_classes if teacher_store and not token_store else 0,
                      chunk_size, objective.needs_attention_maps, token_store=token_store,
                      onpolicy=onpolicy.from_config(config, info, store=teacher_store is not None,
                                                    teacher_devices=config.mesh.teacher_devices))
    seqkd.check(config, info)
    views = _abstract_views(ctx, s_vars, teacher_abstract,
                            abstract_batch(task, info, config.batch_size, teacher_store),
                            teacher_store)
    objective.check_models(views)
    split_labels = (data.split_labels(info, config.data.train_split)
                    if objective.needs_split_labels else None)
    objective = objective.bind(views, num_data=info.splits[config.data.train_split],
                               split_labels=split_labels)
    tx, schedule = make_optimizer(config.optimizer, config.num_steps,
                                  objective.own_learning_rates)

    def init_state(rng):
        _, params, stats = nnx.split(make_student(nnx.Rngs(params=rng)), nnx.Param,
                                     nnx.BatchStat)
        aux_params, aux_state = objective.init_aux(views, jax.random.fold_in(rng, 2))
        trainable = {"student": params, "aux": aux_params}
        return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, batch_stats=stats,
                          opt_state=tx.init(trainable),
                          rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
                          aux_state=aux_state, masks=pruning.init_masks(prune, params))

    abstract = jax.eval_shape(lambda: init_state(jax.random.PRNGKey(config.seed)))  # no compile
    shardings = _state_shardings(abstract, mesh, config.mesh.student_rule,
                                 parallel.names_by_path(logical_axes(s_params)),
                                 config.mesh.student_axis_rules, "config.mesh.student_axis_rules")
    ctx = dataclasses.replace(ctx, objective=objective, tx=tx, pruning=prune)
    batch_sh = parallel.batch_sharding(mesh)
    setup = RunSetup(config, info, mesh, ctx, schedule, init_state,
                     _with_shardings(abstract, shardings), shardings, teacher_abstract, batch_sh,
                     teacher_store, teacher_mesh)
    jax.eval_shape(functools.partial(train_step, ctx), setup.abstract_state,
                   setup.teacher_input_abstract, setup.abstract_batch())
    return setup


def _check_student_hf(student_cfg, abstract_params) -> None:
    """config.student.hf_checkpoint (and its hf_layers) fit the student's parameters."""
    layers = tuple(student_cfg.hf_layers)
    if layers and not student_cfg.hf_checkpoint:
        raise ValueError("config.student.hf_layers picks layers of config.student.hf_checkpoint, "
                         "which is empty; set it or leave hf_layers = ()")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"config.student.hf_layers must be layer indices (ints), got {layers}")
    if student_cfg.hf_checkpoint:
        hf_params.check_fits(student_cfg.hf_checkpoint, abstract_params,
                             "config.student.hf_checkpoint", layers)


def _chunk_size(config, task: Task, info, extra_defs, teacher_store) -> int:
    """config.lm.chunk_size, checked: sequence tasks only, a divisor of the length, one
    teacher run online (a chunked step applies the primary teacher's head itself)."""
    size = int(config.lm.chunk_size)
    if not size:
        return 0
    if task.unit != "tokens":
        raise ValueError(f"config.lm.chunk_size: chunking runs over a sequence; task "
                         f"'{task.name}' has none, so set it to 0")
    check_chunk_size(size, info.seq_len, "config.lm.chunk_size")
    if extra_defs or not (teacher_store is None
                          or isinstance(teacher_store, store_tokens.TokenStoreLayout)):
        raise ValueError("config.lm.chunk_size: a chunked step distils from one teacher run "
                         "online or from a token store; remove config.extra_teachers or set "
                         "config.lm.chunk_size=0")
    return size


def _meshes(config) -> tuple[Mesh, Mesh]:
    """The student's mesh and the teacher's: the same one, or with
    `config.mesh.teacher_devices = N` the last N devices as the teacher's own 1-D mesh
    (its forward pass then overlaps the student's step through asynchronous dispatch)."""
    devices, n = jax.devices(), int(config.mesh.teacher_devices)
    if n == 0:
        mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes)
        return mesh, mesh
    if not 0 < n < len(devices):
        raise ValueError(f"config.mesh.teacher_devices must be in [0, {len(devices) - 1}], "
                         f"got {n}")
    if jax.process_count() > 1:
        raise ValueError("config.mesh.teacher_devices: a teacher sub-mesh is single-process "
                         "only for now; set it to 0 on multi-process runs")
    return (parallel.make_mesh(config.mesh.shape, config.mesh.axes, devices[:-n]),
            parallel.make_mesh((-1, 1), ("data", "model"), devices[-n:]))


def _open_store(config) -> store_lib.TeacherStore | store_tokens.TokenStore | None:
    """The configured offline teacher store, checked against the config (its fingerprint
    is checked against the teacher's parameters when the run restores them)."""
    if not config.teacher.store:
        return None
    if config.extra_teachers:
        raise ValueError("config.teacher.store holds one teacher's outputs; remove "
                         "config.extra_teachers or run those teachers online")
    if not config.teacher.checkpoint:
        raise ValueError("config.teacher.store needs config.teacher.checkpoint: the store's "
                         "fingerprint is checked against that teacher's parameters")
    store_lib.check_config(config)
    return store_tokens.open_store(config.teacher.store, config.task)


def _teacher(t_cfg, field: str, task: Task, info, mesh, rule: str, overrides=()):
    """(graphdef, abstract {'params', 'batch_stats'} with dtypes and shardings) of a
    teacher, checked against its checkpoint when one is given."""
    if hasattr(task, "teacher_model_io"):  # a teacher with its own tokenizer and length
        classes, shape = task.teacher_model_io(info)
    else:
        classes, shape = _num_classes(t_cfg, field, info), task.model_io(info)[1]
    t_dtype = _dtype(t_cfg.dtype, f"{field}.dtype")
    make = model_factory(t_cfg, field, classes, shape, t_dtype, task)
    graphdef, params, stats = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))), nnx.Param,
                                        nnx.BatchStat)
    t_vars = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, t_dtype),
                          {"params": params, "batch_stats": stats})
    named = {("params", *path): names
             for path, names in parallel.names_by_path(logical_axes(params)).items()}
    abstract = _with_shardings(t_vars, parallel.tree_shardings(
        t_vars, mesh, rule, named, overrides, "config.mesh.teacher_axis_rules"))
    if t_cfg.checkpoint and t_cfg.get("hf_checkpoint"):
        raise ValueError(f"{field}.checkpoint and {field}.hf_checkpoint are both set; the "
                         "teacher's weights come from one of them")
    if t_cfg.checkpoint:
        checkpoint.check_teacher_fits(t_cfg.checkpoint, abstract, field=f"{field}.checkpoint")
    elif t_cfg.get("hf_checkpoint"):
        check_hf_teacher(t_cfg.hf_checkpoint, t_cfg.model, dict(t_cfg.kwargs), vocab=classes,
                         input_shape=shape, tokenizer=info.tokenizer,
                         field=f"{field}.hf_checkpoint")
        hf_params.check_fits(t_cfg.hf_checkpoint, abstract["params"], f"{field}.hf_checkpoint")
    return graphdef, abstract


def _abstract_views(ctx: StepContext, student_vars, teacher_vars, batch, teacher_store):
    """Shapes of everything a loss term sees, from abstract forward passes (full logits:
    the terms' shapes are checked on the unchunked form)."""
    task = ctx.task
    plain = dataclasses.replace(ctx, chunk_size=0)

    def student(v, b):
        inputs = task.inputs(b, None, train=False)
        return forward(ctx.student_def, v["params"], v["batch_stats"], inputs.x, train=False,
                       **plain.call_kwargs(inputs, chunked=False))
    s_logits, s_features, _ = jax.eval_shape(student, student_vars, batch)
    teachers = jax.eval_shape(
        lambda t, b: all_teacher_outputs(plain, t, task.inputs(b, None, train=False), b),
        None if teacher_store else teacher_vars, batch)
    t_logits, t_features = teachers.get(PRIMARY, (None, None))
    targets = jax.eval_shape(task.targets, batch)
    weights = jax.eval_shape(task.weights, batch)
    return Views(s_logits, s_features, t_logits, t_features, targets, batch["index"],
                 teachers, weights)


def abstract_batch(task: Task, info: data.DatasetInfo, batch_size: int,
                   teacher_store=None) -> dict:
    """The train batch's fields (plus the store's, when the teacher comes from one)."""
    batch = task.abstract_batch(info, batch_size)
    return {**batch, **(teacher_store.abstract_fields(batch_size) if teacher_store else {})}


def model_cost(graphdef, abstract_vars, input_shape, input_dtype=jnp.float32,
               per: int = 1) -> tuple[int, float]:
    """(parameter count, forward FLOPs per item: of one input `[1, *input_shape]`, divided
    by the `per` items it holds (1 example, or L tokens); XLA's cost analysis, or the
    matmul + conv count where the backend's is incomplete; see `jaxdistill.flops`)."""
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_vars["params"]))

    def forward(variables, x):
        model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
        logits, features = model(x, train=False)
        return features if logits is None else logits  # an encoder: its features
    plain = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_vars)
    x = jax.ShapeDtypeStruct((1, *input_shape), input_dtype)
    compiled = jax.jit(forward).lower(plain, x).compile()
    flops, _ = program_flops(compiled, dot_conv_flops(forward, plain, x))
    return params, flops / per


def run_cost(setup: RunSetup, graphdef, abstract_vars) -> tuple[int, float]:
    """`model_cost` of one of the run's models: FLOPs per example or per token."""
    task, info = setup.task, setup.info
    return model_cost(graphdef, abstract_vars, task.model_io(info)[1], task.input_dtype,
                      task.items_per_step(1, info))
