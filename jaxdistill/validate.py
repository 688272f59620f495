"""Bad input, refused before anything runs, in one line naming the field and the fix.

Every command reports a user's mistake as one line on stderr,
`jaxdistill: error: config.<field>: <problem>; <fix>`, exits 1, prints no traceback, and
leaves the workdir as it was. This module holds the checks that make that so:

- `parse_argv` / `flags_parser` (absl's `app.run(main, flags_parser=...)`): the command
  line. The config file (missing, not Python, failing, an unknown argument after the
  colon), every `--config.<field>` override (a misspelt field or section at any depth, a
  term or a loss field the config does not set, a value of the wrong type) and every other
  flag (unknown, missing, malformed), each with a "did you mean" where one is close.
- `check_config`: the whole config, in one place: the names of every field (against
  `defaults.base_config()`, whose sections and types it mirrors), types, ranges and the
  names a field must come from (models, losses and their fields, teachers, tasks, readers,
  augmentations, optimizers, schedules, sharding rules, dtypes), `teacher.train.*` under its
  own names. Pure Python: nothing is built, read or traced.
- `check_data` (and `prepared_data`): what only the prepared dataset tells (its splits,
  channels, size, kind; a data_dir where it cannot be built).
- `check_workdir`, `check_run_paths`, `check_resume`: a workdir that is a file, under a
  file, not writable, its own teacher's run or store, or a rerun's with `num_steps` below
  its newest checkpoint.
- `reported` / `error_line`: the one-line reporter every command's body runs under
  (`USER_ERRORS`: a ValueError from any layer, an OSError, a non-finite loss).
- `teacher_stage`: names the user's fields in errors of the teacher trained here (whose run
  config `experiment.teacher_config` derives from `teacher.*`).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import linecache
import math
import os
import re
import sys
import traceback
import types
from collections.abc import Mapping

import ml_collections

PROG = "jaxdistill"
USER_ERRORS = (ValueError, OSError, FloatingPointError)
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "--helpxml")
DTYPES = ("float32", "bfloat16")  # run_setup.DTYPES
# Sections whose keys are not fixed by the schema: checked against what they name instead.
FREE_FORM = ("student.kwargs", "teacher.kwargs", "objective", "extra_teachers")
EXTRA_TEACHER_FIELDS = ("model", "kwargs", "checkpoint", "dtype", "num_classes")


# ---------------------------------------------------------------------------- reporting

def one_line(text) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def describe(e: BaseException) -> str:
    """A user error's message: an OSError as `<path>: <reason>`."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def error_line(message, prog: str = PROG) -> str:
    return f"{prog}: error: {one_line(message)}"


@contextlib.contextmanager
def reported(prog: str = PROG):
    """Runs a command's body; a user error (`USER_ERRORS`) from any layer ends the process
    with its one line on stderr and exit status 1, without a traceback."""
    try:
        yield
    except USER_ERRORS as e:
        raise SystemExit(error_line(describe(e), prog)) from None


def _close(word: str, options) -> str | None:
    options = [str(o) for o in options]
    match = difflib.get_close_matches(str(word), options, n=1, cutoff=0.7)
    return match[0] if match else None


def options_hint(word, options, label: str = "choose one of", shown=None) -> str:
    """`; <label> <shown>`, or `; did you mean '<closest>'? <Label> <shown>` when one of
    `options` is close to `word` (`shown` defaults to the options as a tuple)."""
    shown = tuple(options) if shown is None else shown
    match = _close(word, options) if isinstance(word, str) else None
    if match is None:
        return f"; {label} {shown}"
    return f"; did you mean {match!r}? {label[0].upper()}{label[1:]} {shown}"


def unknown_choice(field: str, value, choices, colon: bool = True) -> ValueError:
    """`config.<field>: '<value>' is unknown; choose one of (...)` (+ the closest)."""
    return ValueError(f"{field}{':' if colon else ''} {value!r} is unknown"
                      f"{options_hint(value, choices)}")


# ---------------------------------------------------------------------------- the schema

def schema() -> ml_collections.ConfigDict:
    """The fields every run config has (`defaults.base_config()`)."""
    from jaxdistill.defaults import base_config
    return base_config()


def _is_section(value) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, Mapping))


def _paths(tree, prefix: str = "") -> list[str]:
    """Every dotted path (sections and fields) of a config tree."""
    out = []
    for key in tree:
        path = f"{prefix}{key}"
        out.append(path)
        if _is_section(tree[key]) and path not in FREE_FORM:
            out += _paths(tree[key], f"{path}.")
    return out


def _get(tree, path: str):
    node = tree
    for key in path.split("."):
        if not _is_section(node) or key not in node:
            return None
        node = node[key]
    return node


def suggest_field(path: str, tree=None) -> str | None:
    """The schema field a misspelt dotted `path` most likely means: the first unknown part
    replaced by its closest sibling, else a field of the same (or a close) name in another
    section (`learning_rate`, `learing_rate` -> `optimizer.learning_rate`), else None."""
    tree = schema() if tree is None else tree
    paths = _paths(tree)
    parts = path.split(".")
    node, known = tree, []
    for i, part in enumerate(parts):
        if _is_section(node) and part in node:
            node, known = node[part], [*known, part]
            continue
        if _is_section(node):
            match = _close(part, node.keys())
            if match is not None:
                candidate = ".".join([*known, match, *parts[i + 1:]])
                if candidate in paths or ".".join(known) in FREE_FORM:
                    return candidate
        break
    leaves = {p: p.split(".")[-1] for p in paths if p != path}
    for cutoff in (1.0, 0.8):  # the same name in another section, then a close one
        same = sorted((p for p, leaf in leaves.items()
                       if difflib.SequenceMatcher(None, leaf, parts[-1]).ratio() >= cutoff),
                      key=lambda p: (p.count("."), p))
        if same:
            return same[0]
    return None


def unknown_field(path: str, tree=None) -> ValueError:
    """`config.<path>: no such field; did you mean config.<x>?` (or the section's fields)."""
    tree = schema() if tree is None else tree
    match = suggest_field(path, tree)
    if match is not None:
        return ValueError(f"config.{path}: no such field; did you mean config.{match}?")
    parent = path.rpartition(".")[0]
    node = _get(tree, parent) if parent else tree
    where = f"config.{parent}" if parent else "the config"
    fields = ", ".join(sorted(node.keys())) if _is_section(node) else ""
    return ValueError(f"config.{path}: no such field; {where} has {fields}")


# ---------------------------------------------------------------------------- the config

def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(default) -> str:
    if isinstance(default, bool):
        return "True or False"
    if _integer(default):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    return "a tuple"


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _integer(default):
        return _integer(value)
    if isinstance(default, float):
        return _number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return True


def _check_tree(config, tree, prefix: str = "") -> None:
    """Names and types of every field against the schema (free-form sections aside)."""
    for key in config:
        path = f"{prefix}{key}"
        if key not in tree:
            raise unknown_field(path)
        value, default = config[key], tree[key]
        if _is_section(default):
            if not _is_section(value):
                first = next(iter(default.keys()), "x")
                raise ValueError(f"config.{path} is a section of fields, got {value!r}; set its "
                                 f"fields instead, e.g. config.{path}.{first}")
            if path not in FREE_FORM:
                _check_tree(value, default, f"{path}.")
            continue
        if not _type_ok(value, default):
            example = f"({value!r},)" if isinstance(default, tuple) and _number(value) else (
                repr(default))
            hint = ("a per-channel tuple" if path in ("data.mean", "data.std")
                    else _type_name(default))
            raise ValueError(f"config.{path} must be {hint}, got {value!r} "
                             f"({type(value).__name__}); e.g. {example}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{path} must be a finite number, got {value!r}; e.g. "
                             f"{default!r}")
    for key in tree:
        if key not in config:
            raise ValueError(f"config.{prefix}{key} is missing; start the config from "
                             "jaxdistill.defaults.base_config(), which has every field")


def _at_least(config, path: str, low, why: str = "") -> None:
    value = _get(config, path)
    if value < low:
        kind = "an integer" if _integer(value) else "a number"
        raise ValueError(f"config.{path} must be {kind} >= {low}, got {value!r}"
                         + (f"; {why}" if why else ""))


def _choice(config, path: str, choices, colon: bool = True) -> None:
    value = _get(config, path)
    if value not in choices:
        raise unknown_choice(f"config.{path}", value, choices, colon)


def _numbers(config, path: str, *, positive: bool = False, unit: bool = False) -> tuple:
    values = tuple(_get(config, path))
    if not values or not all(_number(v) and math.isfinite(v) for v in values):
        raise ValueError(f"config.{path} must be a non-empty tuple of finite numbers, got "
                         f"{values!r}")
    if positive and not all(v > 0 for v in values):
        raise ValueError(f"config.{path} must hold numbers > 0, got {values!r}")
    if unit and not all(0 < v < 1 for v in values):
        raise ValueError(f"config.{path} must hold fractions of num_steps in (0, 1), got "
                         f"{values!r}")
    return values


def check_model(name, field: str, task, allow_empty: bool = False) -> None:
    """`name` (at `field`) is a registry name whose model reads what `task` feeds it."""
    from jaxdistill.models import model_names
    from jaxdistill.models.registry import kind_phrase, model_kind
    if allow_empty and name == "":
        return
    if name == "":
        raise ValueError(f"{field} is empty; name a model: {', '.join(model_names())}")
    if name not in model_names():
        names = ", ".join(model_names())
        raise ValueError(f"{field}: unknown model {name!r}"
                         f"{options_hint(name, model_names(), 'available models:', names)}")
    if model_kind(name) != task.model_kind:
        fitting = [m for m in model_names() if model_kind(m) == task.model_kind]
        raise ValueError(f"{field}: {name!r} is {kind_phrase(name)}, but task "
                         f"'{task.name}' trains {task.model_kind} models: "
                         f"{', '.join(fitting)}")


def model_keywords(name: str) -> tuple[str, ...]:
    """The keyword arguments (`kwargs`) the registered model `name` takes."""
    from jaxdistill.models import registry
    cls, _ = registry._registered(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *registry._RESERVED}
    return tuple(sorted(accepted))


def _kwargs(config, section: str) -> None:
    name, kwargs = _get(config, f"{section}.model"), _get(config, f"{section}.kwargs")
    if not name:
        return
    accepted = model_keywords(name)
    for key in kwargs:
        if key not in accepted:
            hint = options_hint(key, accepted, "it takes", ", ".join(accepted))
            raise ValueError(f"config.{section}.kwargs.{key}: model {name!r} takes no such "
                             f"keyword{hint}")


def loss_fields(loss: str) -> tuple[str, ...]:
    """Every field a term of `loss` takes (its hyper-parameters and the common ones)."""
    from jaxdistill.objective import _COMMON, _fn_fields
    from jaxdistill.terms import TERMS
    return tuple(sorted(_fn_fields(TERMS[loss])[0] | set(_COMMON)))


def _objective(config, task_cls) -> None:
    """Term names, losses, their fields and the teachers they name; weights, warm-ups and
    temperatures (the messages of `objective.build_objective`, which checks them again)."""
    from jaxdistill.objective import MEAN, PRIMARY, RESERVED_NAMES, _fn_fields
    from jaxdistill.terms import TERMS
    terms = config.objective
    if not terms:
        raise ValueError("config.objective is empty; add at least one term, e.g. "
                         "ce=dict(weight=1.0)")
    teachers = (PRIMARY, *config.extra_teachers.keys(), MEAN)
    for name in terms:
        where, raw = f"config.objective.{name}", terms[name]
        if not _is_section(raw):
            raise ValueError(f"{where} must be a term, dict(weight=..., <loss fields>), got "
                             f"{raw!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"{where}: '{name}' is a metric the step reports; name the term "
                             "differently (and set loss='...')")
        loss = raw.get("loss", name)
        if loss not in TERMS:
            field = f"{where}.loss" if "loss" in raw else where
            unnamed = "" if "loss" in raw else " (the term's name; set loss='...' to pick one)"
            raise ValueError(f"{field}: unknown loss {loss!r}{unnamed}"
                             f"{options_hint(loss, TERMS, 'available:', sorted(TERMS))}")
        spec, allowed = TERMS[loss], loss_fields(loss)
        for key in raw:
            if key not in allowed:
                raise ValueError(f"{where}: unknown field(s) [{key!r}] for loss '{loss}'"
                                 f"{options_hint(key, allowed, 'it takes', list(allowed))}")
        missing = sorted(_fn_fields(spec)[1] - set(raw.keys()))
        if missing:
            raise ValueError(f"{where}: loss '{loss}' needs field(s) {missing}")
        if task_cls.terms is not None and loss not in task_cls.terms:
            raise ValueError(f"{where}: loss '{loss}' does not support task '{task_cls.name}'; "
                             f"it supports {sorted(task_cls.terms)}")
        weight = raw.get("weight", 1.0)
        if not _number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}.weight must be >= 0, got {weight!r}")
        warmup = raw.get("warmup_steps", 0)
        if not _integer(warmup) or warmup < 0:
            raise ValueError(f"{where}.warmup_steps must be >= 0, got {warmup!r}")
        if "temperature" in raw and not (_number(raw["temperature"])
                                         and math.isfinite(raw["temperature"])
                                         and raw["temperature"] > 0):
            raise ValueError(f"{where}.temperature must be > 0, got {raw['temperature']!r}")
        if spec.needs_teacher and not config.teacher.model:
            raise ValueError(f"{where}: loss '{loss}' needs a teacher; set config.teacher.model "
                             "and config.teacher.checkpoint, or remove the term")
        teacher = raw.get("teacher", PRIMARY)
        if spec.needs_teacher and teacher not in teachers:
            configured = [t for t in teachers if t != MEAN]
            raise ValueError(f"{where}.teacher: no teacher named {teacher!r}"
                             f"{options_hint(teacher, teachers, 'configured:', configured)} (or "
                             f"'{MEAN}'); name one, or add it to config.extra_teachers")


def _extra_teachers(config, task_cls) -> None:
    from jaxdistill.objective import MEAN, PRIMARY
    extra = config.extra_teachers
    if extra and not config.teacher.model:
        raise ValueError("config.extra_teachers needs a primary config.teacher.model")
    for name in extra:
        where, raw = f"config.extra_teachers.{name}", extra[name]
        if name in (PRIMARY, MEAN):
            raise ValueError(f"{where}: '{name}' is a reserved name")
        if not _is_section(raw):
            raise ValueError(f"{where} must be dict(model=..., checkpoint=...), got {raw!r}")
        for key in raw:
            if key not in EXTRA_TEACHER_FIELDS:
                hint = options_hint(key, EXTRA_TEACHER_FIELDS, "an extra teacher has",
                                    ", ".join(EXTRA_TEACHER_FIELDS))
                raise ValueError(f"{where}.{key}: no such field{hint}")
        for key in ("model", "checkpoint"):
            if not raw.get(key):
                raise ValueError(f"{where}.{key} is missing; an extra teacher needs model=... "
                                 "and checkpoint=...")
        check_model(raw.model, f"{where}.model", task_cls)
        if raw.get("dtype", "float32") not in DTYPES:
            raise unknown_choice(f"{where}.dtype", raw["dtype"], DTYPES)


def _mesh(config) -> None:
    from jaxdistill.parallel import RULES
    shape, axes = tuple(config.mesh.shape), tuple(config.mesh.axes)
    if not all(_integer(s) and (s == -1 or s >= 1) for s in shape):
        raise ValueError(f"config.mesh.shape must hold device counts >= 1 (one may be -1: the "
                         f"rest), got {shape!r}")
    if not all(isinstance(a, str) for a in axes):
        raise ValueError(f"config.mesh.axes must hold axis names, got {axes!r}")
    for role in ("student", "teacher"):
        _choice(config, f"mesh.{role}_rule", RULES)
        field = f"config.mesh.{role}_axis_rules"
        for pair in config.mesh[f"{role}_axis_rules"]:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and isinstance(pair[0], str) and (pair[1] is None or isinstance(pair[1], str))):
                raise ValueError(f"{field}: {pair!r} is not a (logical name, mesh axis) pair, "
                                 "e.g. ('vocab', 'tensor') or ('embed', None)")
            if pair[1] is not None and pair[1] not in axes:
                raise ValueError(f"{field}: ({pair[0]!r}, {pair[1]!r}) names a mesh axis that is "
                                 f"not in config.mesh.axes {axes}")
    _at_least(config, "mesh.teacher_devices", 0)


def check_config(config) -> None:
    """Raises a one-line ValueError naming the field (its full path) for the first field of
    `config` whose name, type or value is wrong (see the module doc). Reads nothing."""
    from jaxdistill import pruning, quantization
    from jaxdistill.augment import KINDS
    from jaxdistill.data.pipeline import READERS
    from jaxdistill.losses.chunked import check_chunk_size
    from jaxdistill.optim import OPTIMIZERS, SCHEDULES
    from jaxdistill.tasks import task_class

    _check_tree(config, schema())
    task_cls = task_class(config.task)
    _at_least(config, "seed", 0)
    for path in ("batch_size", "eval_batch_size", "num_steps"):
        _at_least(config, path, 1)
    for path in ("log_every", "eval_every", "checkpoint_every"):
        _at_least(config, path, 0)
    _at_least(config, "keep_checkpoints", 1, "the newest checkpoint is what a rerun resumes "
              "from")

    for path, what in (("data.name", "dataset"), ("data.train_split", "split"),
                       ("data.eval_split", "split")):
        if not _get(config, path):
            raise ValueError(f"config.{path} is empty; name a {what}")
    _choice(config, "data.reader", READERS)
    _choice(config, "data.augment", KINDS, colon=False)  # augment.Augment's words
    _at_least(config, "data.augment_pixels", 0)
    _numbers(config, "data.mean")
    _numbers(config, "data.std", positive=True)

    if config.lm.chunk_size and task_cls.unit != "tokens":  # run_setup._chunk_size's words
        raise ValueError(f"config.lm.chunk_size: chunking runs over a sequence; task "
                         f"'{task_cls.name}' has none, so set it to 0")
    if task_cls.unit == "tokens" and not config.data.seq_len >= 2:  # data.source's words
        raise ValueError(f"config.data.seq_len must be an integer >= 2, got "
                         f"{config.data.seq_len!r}")
    if task_cls.unit == "tokens":
        check_chunk_size(config.lm.chunk_size, config.data.seq_len, "config.lm.chunk_size")
    if task_cls.unit == "tokens" and config.lm.sample_tokens and not config.lm.sample_prompt:
        raise ValueError("config.lm.sample_prompt is empty, so there is nothing to continue; "
                         "give a prompt (e.g. 'def ') or set config.lm.sample_tokens = 0")

    check_model(config.student.model, "config.student.model", task_cls)
    check_model(config.teacher.model, "config.teacher.model", task_cls, allow_empty=True)
    from jaxdistill.tasks.cross_tokenizer import check_vocabularies
    check_vocabularies(config)  # different vocabularies need a cross-tokenizer term
    for role in ("student", "teacher"):
        _kwargs(config, role)
        _at_least(config, f"{role}.num_classes", 0)
        _choice(config, f"{role}.dtype", DTYPES)
        classes = config[role].num_classes
        if task_cls.unit == "tokens" and classes and classes != config.data.vocab_size:
            raise ValueError(f"config.{role}.num_classes: a vocabulary of {classes} differs from "
                             f"the {config.data.vocab_size} tokens of config.data.vocab_size; "
                             "teacher and student share the dataset's tokenizer: set it to 0 "
                             "(a teacher with its own: task 'cross_tokenizer')")
    _at_least(config, "teacher.train.num_steps", 1)
    rate = config.teacher.train.learning_rate
    if not rate > 0:
        raise ValueError(f"config.teacher.train.learning_rate must be a finite number > 0, got "
                         f"{rate!r}")
    _choice(config, "teacher.train.augment", KINDS, colon=False)
    pruning.check_config(config)
    quantization.check_config(config)
    _extra_teachers(config, task_cls)
    _objective(config, task_cls)

    _choice(config, "optimizer.name", OPTIMIZERS)
    _choice(config, "optimizer.schedule", SCHEDULES)
    if not config.optimizer.learning_rate > 0:
        raise ValueError(f"config.optimizer.learning_rate must be a finite number > 0, got "
                         f"{config.optimizer.learning_rate!r}")
    if config.optimizer.decay_fractions or config.optimizer.schedule == "step":
        _numbers(config, "optimizer.decay_fractions", unit=True)
    _at_least(config, "optimizer.warmup_steps", 0)
    if not 0 <= config.optimizer.momentum < 1:
        raise ValueError(f"config.optimizer.momentum must be in [0, 1), got "
                         f"{config.optimizer.momentum!r}")
    _at_least(config, "optimizer.weight_decay", 0)
    _at_least(config, "optimizer.grad_clip", 0, "0 turns clipping off")
    _mesh(config)
    _at_least(config, "data.seed", -1, "-1 takes config.seed")
    from jaxdistill.population_config import check_population
    check_population(config)


# ---------------------------------------------------------------------------- the data

def prepared_data(task, config):
    """`task.prepare_data(config.data)`, with an OSError (a data_dir that cannot be written,
    where an offline dataset is built) named as config.data.data_dir's."""
    try:
        return task.prepare_data(config.data)
    except OSError as e:
        from jaxdistill.data import default_data_dir
        where = config.data.data_dir or default_data_dir()
        raise ValueError(f"config.data.data_dir={where!r}: cannot prepare {config.data.name} "
                         f"there ({describe(e)}); give a data_dir this process can write to, "
                         "or one where the dataset is already prepared") from None


def check_data(config, info) -> None:
    """What only the prepared dataset `info` can tell: the splits exist, the reader reads
    its kind, a train batch fits the train split, per-channel statistics fit its images."""
    from jaxdistill.data.pipeline import READERS
    for role in ("train_split", "eval_split"):
        split = config.data[role]
        if split not in info.splits:
            raise ValueError(f"config.data.{role}: {split!r} is not a split of {info.name}"
                             f"{options_hint(split, info.splits, 'it has', sorted(info.splits))}")
    reader = config.data.reader
    if reader == "tf":  # TensorFlow is optional: its absence is said now, not at the first batch
        from jaxdistill.data import tf_reader
        tf_reader._tf()
    if info.kind not in READERS[reader].KINDS:
        able = sorted(r for r, module in READERS.items() if info.kind in module.KINDS)
        raise ValueError(f"config.data.reader={reader!r} cannot read {info.kind} datasets such "
                         f"as {info.name}: use config.data.reader={able[0]!r}")
    size = info.splits[config.data.train_split]
    if config.batch_size > size:
        raise ValueError(f"config.batch_size ({config.batch_size}) exceeds the {size} examples "
                         f"of {info.name}[{config.data.train_split}]; use at most {size}")
    if info.kind == "image":
        channels = info.image_shape[-1]
        for field in ("mean", "std"):
            values = tuple(config.data[field])
            if len(values) not in (1, channels):
                raise ValueError(f"config.data.{field} has {len(values)} values, but "
                                 f"{info.name}'s images have {channels} channel"
                                 f"{'s' if channels > 1 else ''}; give one value per channel "
                                 "(or one for all)")


# ---------------------------------------------------------------------------- the workdir

def check_workdir(workdir: str, flag: str = "--workdir",
                  want: str = "a directory (new, or a run's to resume)") -> None:
    """Refuses a workdir (or the directory `flag` names) that is a file, lies under a file,
    or cannot be written (read-only file system, no permission). Writes nothing."""
    if not workdir:
        raise ValueError(f"{flag} is empty; give {want}")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={workdir}: a file, not a directory; give {want}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag}={workdir}: '{existing}' is a file, so no directory can be "
                         "made under it; give another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        where = "" if existing == path else f" ('{existing}', where it would be made,)"
        raise ValueError(f"{flag}={workdir}{where}: {why}; give a directory this process "
                         "can write to")


def check_run_paths(config, workdir: str) -> None:
    """Refuses a run whose --workdir is its own teacher's run or store (it would write its
    checkpoints into what it reads)."""
    here = os.path.abspath(os.path.expanduser(workdir))
    teachers = {"config.teacher.checkpoint": config.teacher.checkpoint,
                "config.teacher.store": config.teacher.store,
                **{f"config.extra_teachers.{name}.checkpoint": t.get("checkpoint", "")
                   for name, t in config.extra_teachers.items()}}
    for field, path in teachers.items():
        if path and os.path.abspath(os.path.expanduser(path)) == here:
            raise ValueError(f"{field} is --workdir itself ({workdir}): the run would write "
                             "into what it reads; give it its own --workdir")


def check_resume(config, workdir: str) -> None:
    """Refuses a rerun whose config.num_steps is below the newest checkpoint's step (what
    the trainer would find only after it started writing). Reads the step names only."""
    from jaxdistill.checkpoint import CHECKPOINT_DIR
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(
        directory) else []
    if steps and max(steps) > config.num_steps:
        raise ValueError(f"config.num_steps ({config.num_steps}) is below the step of the newest "
                         f"checkpoint in {workdir} ({max(steps)}); give at least {max(steps)}, "
                         "or use a new --workdir")


# ---------------------------------------------------------------------------- the teacher stage

# Errors of the teacher stage name its derived run config's fields; the user set these.
_TEACHER_STAGE = ((re.compile(r"\bconfig\.student\b"), "config.teacher"),
                  (re.compile(r"\bconfig\.num_steps\b"), "config.teacher.train.num_steps"),
                  (re.compile(r"\bconfig\.optimizer\.learning_rate\b"),
                   "config.teacher.train.learning_rate"),
                  (re.compile(r"\bconfig\.data\.augment\b(?!_)"), "config.teacher.train.augment"))


@contextlib.contextmanager
def teacher_stage(active: bool = True):
    """Around the teacher stage (`experiment.teacher_config`'s derived run; a no-op unless
    `active`): a ValueError's fields are renamed to the ones the user set (config.student ->
    config.teacher, config.num_steps -> config.teacher.train.num_steps, ...)."""
    try:
        yield
    except ValueError as e:
        if not active:
            raise
        message = str(e)
        for pattern, name in _TEACHER_STAGE:
            message = pattern.sub(name, message)
        if message == str(e):
            raise
        raise ValueError(f"{_once_each(message)} (the teacher trained here)") from None


_CHANGED = re.compile(r"^(config\.[\w.]+: changed since this workdir was started \((.*?)\))"
                      r"(?:, and so did (.*))?(; use a new --workdir or restore the old) values?$")


def _once_each(message: str) -> str:
    """run_record's 'changed' message with each renamed field once (the teacher stage records
    teacher.train.learning_rate both as itself and as its optimizer.learning_rate)."""
    m = _CHANGED.match(message)
    if not m or not m.group(3):
        return message
    head, change, others, tail = m.groups()
    first = f"{head.split(':')[0]} ({change})"
    kept = []
    for item in re.split(r", (?=config\.)", others):
        if item != first and item not in kept:
            kept.append(item)
    more = f", and so did {', '.join(kept)}" if kept else ""
    return f"{head}{more}{tail} value{'s' if kept else ''}"


# ---------------------------------------------------------------------------- the command line

def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `--config=<path>[:<arg>]`, as ml_collections loads it (locked);
    a one-line ValueError naming --config for a file that is missing, not Python, fails,
    has no get_config, or refuses the argument after the colon."""
    flag = f"--config={spec}"
    path, colon, arg = spec.partition(":")
    if not path:
        raise ValueError(f"{flag}: no file given; e.g. --config=configs/digits_kd.py")
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".py"))
        raise ValueError(f"{flag}: a directory; give one of its config files"
                         + (f", e.g. {files[0]}" if files else ""))
    if not os.path.isfile(path):
        candidates = []
        for d in {os.path.dirname(path) or ".", "configs"}:
            if os.path.isdir(d):
                candidates += [os.path.join(d, n) if d != "." else n for n in os.listdir(d)
                               if n.endswith(".py")]
        match = _close(path, candidates) or _close(os.path.join("configs", path), candidates)
        raise ValueError(f"{flag}: no such file" + (f"; did you mean {match}?" if match else ""))
    try:
        with open(path) as f:
            source = f.read()
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise ValueError(f"{flag}: {path} line {e.lineno}: {e.msg}; fix the file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{flag}: cannot read {path} ({describe(e)})") from None
    module = types.ModuleType(f"config_{os.path.splitext(os.path.basename(path))[0]}")
    module.__file__ = path
    try:
        exec(code, module.__dict__)  # noqa: S102 - a config file is code by design
    except Exception as e:  # noqa: BLE001 (whatever a config file raises is the user's)
        raise ValueError(f"{flag}: {_config_failure(e, path)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(  # noqa: TRY004 (a user error, reported like the others)
            f"{flag}: {path} defines no get_config(); a config file returns its "
            "config from get_config(arg=None)")
    args = (arg,) if colon else ()
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError:
        want = ("takes no argument after the colon" if colon
                else "needs an argument after a colon, e.g. " + f"--config={path}:<arg>")
        raise ValueError(f"{flag}: get_config() of {path} {want}") from None
    try:
        config = get_config(*args)
    except Exception as e:  # noqa: BLE001 (whatever a config file raises is the user's)
        raise ValueError(f"{flag}: {_config_failure(e, path)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(  # noqa: TRY004 (a user error, reported like the others)
            f"{flag}: get_config() returned {type(config).__name__}, not a "
            "ConfigDict; start from jaxdistill.defaults.base_config()")
    config.lock()
    return config


def _config_failure(e: Exception, path: str) -> str:
    """A config file's exception: its message (without a leading '<path>: '), plus for
    anything but a ValueError the type and the file's line that raised it."""
    message = one_line(e).removeprefix(f"{path}: ")
    if isinstance(e, ValueError):
        return message
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = linecache.getline(frame.filename, frame.lineno).strip()
            where = f" ({path} line {frame.lineno}: {line})"
            break
    return f"{type(e).__name__}: {message}{where}"


_OVERRIDE = re.compile(r"^--?(?:no)?{}\.([^=]+)(?:=.*)?$", re.DOTALL)


def _overrides(args: list[str], name: str) -> list[tuple[int, str]]:
    """(position, field path) of every `--<name>.<field>` in `args`."""
    pattern = re.compile(_OVERRIDE.pattern.format(re.escape(name)), re.DOTALL)
    return [(i, m.group(1)) for i, m in enumerate(map(pattern.match, args)) if m]


def _config_spec(args: list[str], name: str) -> tuple[int, str | None]:
    """(position, value) of the last `--<name>=<value>` (or `--<name> <value>`) in `args`."""
    at, spec = -1, None
    for i, arg in enumerate(args):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
            at, spec = i, args[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            at, spec = i, arg.split("=", 1)[1]
    return at, spec


def check_override(config, path: str) -> None:
    """Raises a one-line ValueError unless `--config.<path>` names a field `config` has
    (what a flag can set: the config file's fields; a flag adds none)."""
    parts = path.split(".")
    node = config
    for i, key in enumerate(parts):
        parent = ".".join(parts[:i])
        if not _is_section(node):
            raise ValueError(f"config.{parent} is {node!r}, not a section; it has no field "
                             f"{key!r}")
        if key in node:
            node = node[key]
            continue
        raise _missing_override(config, parts, i)


def _missing_override(config, parts: list[str], i: int) -> ValueError:
    path, key, parent = ".".join(parts), parts[i], ".".join(parts[:i])
    field = f"config.{'.'.join(parts[:i + 1])}"
    set_it = "a flag can only change what the config file sets: "
    if parent == "objective":
        terms = list(config.objective.keys())
        match, rest = _close(key, terms), "".join(f".{p}" for p in parts[i + 1:])
        if match is not None:
            return ValueError(f"{field}: this config has no term {key!r}; did you mean "
                              f"config.objective.{match}{rest}?")
        return ValueError(f"{field}: this config has no term {key!r} (its terms: "
                          f"{', '.join(terms)}); {set_it}add the term there, e.g. "
                          f"c.objective.{key} = dict(weight=1.0)")
    if len(parts[:i]) == 2 and parts[0] == "objective":
        term = config.objective[parts[1]]
        loss = term.get("loss", parts[1])
        allowed = loss_fields(loss) if _known_loss(loss) else ()
        if key in allowed:
            return ValueError(f"{field}: not set in the config file, so no flag can set it; "
                              f"add {key}=... to c.objective.{parts[1]} there")
        return ValueError(f"{field}: loss '{loss}' has no field {key!r}"
                          f"{options_hint(key, allowed, 'it takes', ', '.join(allowed))}")
    if parent in ("student.kwargs", "teacher.kwargs"):
        model = config[parts[0]].model
        accepted = model_keywords(model) if _known_model(model) else ()
        if key in accepted:
            return ValueError(f"{field}: not set in the config file, so no flag can set it; "
                              f"add c.{parent}.{key} = ... there")
        return ValueError(f"{field}: model {model!r} takes no such keyword"
                          f"{options_hint(key, accepted, 'it takes', ', '.join(accepted))}")
    if parent == "extra_teachers":
        names = list(config.extra_teachers.keys())
        return ValueError(f"{field}: this config has no extra teacher {key!r}"
                          f"{options_hint(key, names, 'it has', names)}; {set_it}add it there")
    return unknown_field(path, config)


def _known_loss(loss) -> bool:
    from jaxdistill.terms import TERMS
    return loss in TERMS


def _known_model(name) -> bool:
    from jaxdistill.models import model_names
    return name in model_names()


def check_argv(args: list[str], config_flag: str = "config"):
    """Checks a command line's config file and its `--<config_flag>.<field>` overrides
    (without parsing any value); returns the loaded config (None if no config is given)."""
    at, spec = _config_spec(args, config_flag)
    overrides = _overrides(args, config_flag)
    if spec is None:
        if overrides:
            raise ValueError(f"--{config_flag}.{overrides[0][1]} needs a --{config_flag}=FILE "
                             "before it; e.g. --config=configs/digits_kd.py")
        return None
    early = [path for i, path in overrides if i < at]
    if early:
        raise ValueError(f"--{config_flag}.{early[0]} comes before --{config_flag}={spec}; give "
                         f"--{config_flag} first (the overrides apply to its config)")
    config = load_config_file(spec)
    for _, path in overrides:
        check_override(config, path)
    return config


def _flag_error(e, flag_values, config, config_flag: str) -> str:
    """One line for an absl flags error."""
    from absl import flags
    if isinstance(e, flags.UnrecognizedFlagError):
        name = e.flagname
        match = _close(name, [n for n in flag_values if not n.startswith(f"{config_flag}.")])
        hint = f"; did you mean --{match}?" if match else ""
        return f"--{name}: unknown flag{hint} (--helpfull lists them)"
    text = str(e)
    m = re.match(r"flag --([^=]+)=(.*?): (.*)$", text, re.DOTALL)
    if not m:
        return one_line(text)
    name, value, reason = m.groups()
    reason = re.sub(r"^\('(.+?)', .*\)$", r"\1", reason, flags=re.DOTALL)  # absl's bool error
    if "must have a value other than None" in reason:
        return f"--{name} is required; give --{name}=... ({one_line(flag_values[name].help)})"
    if config is not None and name.startswith(f"{config_flag}."):
        path = name.split(".", 1)[1]
        current = _get(config, path)
        return (f"config.{path}: cannot set it to {value!r} ({one_line(reason)}); give "
                f"{_type_name(current)} like its value in the config, {current!r}")
    return f"--{name}={value}: {one_line(reason)}"


def parse_argv(argv: list[str], flag_values=None, config_flag: str | None = "config"
               ) -> list[str]:
    """Parses a command line (argv[0] is the program) into `flag_values` (absl's FLAGS by
    default); any mistake raises a one-line ValueError (see the module doc). Returns argv
    without the flags, which must be just the program."""
    from absl import flags
    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    except flags.Error as e:  # a --flagfile that cannot be read
        flagfile = next((a for a in argv if a.lstrip("-").startswith("flagfile")), "--flagfile")
        raise ValueError(f"{flagfile}: {one_line(e).removeprefix('ERROR:: ')}") from None
    config = None
    if config_flag and not any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
        config = check_argv(argv[1:], config_flag)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        raise ValueError(_flag_error(e, flag_values, config, config_flag or "")) from None
    except (AttributeError, KeyError, TypeError, OSError) as e:  # what ml_collections raises
        raise ValueError(one_line(e)) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected argument(s) {rest[1:]}: give everything as --flag=value "
                         "(e.g. --config.num_steps=100)")
    return rest


def exit_if_a_flagfile_is_unreadable(argv: list[str], prog: str = PROG) -> None:
    """For a program's module top, before `config_flags.DEFINE_config_file` (which reads
    the --flagfile's while being defined): an unreadable one ends the process in one line."""
    for arg in argv[1:]:
        name, _, path = arg.lstrip("-").partition("=")
        if name == "flagfile" and path and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "not readable"
            sys.stderr.write(error_line(f"{arg}: {why}; give a file of --flag=value lines",
                                        prog) + "\n")
            sys.exit(1)


def flags_parser(prog: str = PROG, config_flag: str | None = "config"):
    """absl `app.run(main, flags_parser=...)`: `parse_argv` into absl's FLAGS, a mistake
    reported in one line."""
    def parse(argv):
        try:
            return parse_argv(argv, config_flag=config_flag)
        except ValueError as e:
            sys.stderr.write(error_line(e, prog) + "\n")
            sys.exit(1)
    return parse
