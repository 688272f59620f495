"""What a workdir is a run of: `<workdir>/config.json`, compared on every rerun.

Rerunning a workdir resumes it, so it must stay the same run. A change to a field that
alters what is trained (the task, data, models, teachers, objective, optimizer, seed, batch
size, and any field not listed in `RUN_SETTINGS`) is refused before anything is written,
naming every such field; a change to how the run is carried out or reported (logging, eval
and checkpoint cadence, kept checkpoints, eval batch, mesh layout, `num_steps`, where the
prepared dataset lives) is allowed and recorded. A workdir without config.json (a new one,
or one started before configs were recorded) accepts the config it is given.

A field that the record lacks (one added to jaxdistill since the workdir was started) is
unchanged if it holds its default now: its value in `defaults.base_config()`, or for a
field of an objective term that the record has, the term's default
(`objective.term_defaults`). Set to anything else, it is a change like any other. A term,
teacher or model keyword that the record lacks is a change whatever its value. A field
removed from jaxdistill that never changed what a run trains (`REMOVED`) is ignored in the
record, whatever its value.

config.json is `config.to_json()`, except that a teacher trained into `<workdir>/teacher`
is recorded as `teacher.checkpoint = ''`, the config's own way of saying so, so that a
moved or copied workdir keeps its record. `ml_collections.ConfigDict(json.load(f))` reads it
back (tuples come back as lists, which compare equal here).
"""

from __future__ import annotations

import json
import os

import jax

from jaxdistill import defaults, objective

CONFIG = "config.json"
# Fields (or whole sections) that may change between runs of one workdir. `num_steps` below
# the newest checkpoint is refused where the checkpoint is restored.
RUN_SETTINGS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                "eval_batch_size", "num_steps", "baseline", "mesh", "data.data_dir")
# Fields jaxdistill no longer has, whose value never changed what a run trained.
REMOVED = ("data.labeled",)  # it never turned labels off (issue 14 §4)


def write_atomically(path: str, text: str) -> None:
    """Replaces `path` with `text` so that readers see the old file or the new, never part."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def config_json(config, workdir: str) -> str:
    """The record of `config` for `workdir` (see the module doc)."""
    record = json.loads(config.to_json())
    teacher = record.get("teacher", {})
    if teacher.get("checkpoint") and (os.path.abspath(teacher["checkpoint"])
                                      == os.path.join(os.path.abspath(workdir), "teacher")):
        teacher["checkpoint"] = ""
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def changed_fields(old: dict, new: dict, prefix: str = "",
                   default: dict | None = None) -> list[tuple[str, str, str]]:
    """(dotted field, old JSON, new JSON) for every value that differs between two JSON
    trees; a section present on one side only is one entry, its other side 'absent'.
    A field absent from `old` counts as having its value in the `default` tree (where that
    has the field): it is named, as 'absent = default <JSON>', only where `new` differs."""
    changes = []
    default = default if isinstance(default, dict) else {}
    for key in sorted(set(old) | set(new)):
        field = f"{prefix}{key}"
        if key in old and key in new and isinstance(old[key], dict) and isinstance(new[key], dict):
            changes += changed_fields(old[key], new[key], f"{field}.", default.get(key))
            continue
        if key not in old and key in new and key in default:
            changes += [(f, "absent" if was == "absent" else f"absent = default {was}", after)
                        for f, was, after
                        in changed_fields({key: default[key]}, {key: new[key]}, prefix)]
            continue
        before, after = (json.dumps(side[key], sort_keys=True) if key in side else "absent"
                         for side in (old, new))
        if before != after:
            changes.append((field, before, after))
    return changes


def _defaults(old: dict, new: dict) -> dict:
    """The default tree that `changed_fields` holds a recorded config's missing fields to:
    the base config, with the objective's defaults only for the terms that `old` has."""
    tree = json.loads(defaults.base_config().to_json())
    terms = old.get("objective", {})
    tree["objective"] = {name: objective.term_defaults(name, raw.get("loss"))
                         for name, raw in new.get("objective", {}).items()
                         if name in terms and isinstance(raw, dict)}
    return json.loads(json.dumps(tree))


def _without(tree: dict, fields) -> dict:
    """`tree` without the dotted `fields` (those it has)."""
    tree = json.loads(json.dumps(tree))
    for field in fields:
        *sections, leaf = field.split(".")
        node = tree
        for name in sections:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def _is_run_setting(field: str) -> bool:
    return any(field == s or field.startswith(f"{s}.") for s in RUN_SETTINGS)


def check(config, workdir: str) -> None:
    """Raises ValueError, in one line naming every field, if `config` differs from the one
    recorded in `workdir` in a field that alters the run's meaning. Writes nothing."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except ValueError as e:
        raise ValueError(f"--workdir={workdir}: {CONFIG} is not valid JSON ({e}); restore it, or "
                         "delete it to accept the current config") from e
    new = json.loads(config_json(config, workdir))
    old = _without(old, REMOVED)
    changes = [c for c in changed_fields(old, new, default=_defaults(old, new))
               if not _is_run_setting(c[0])]
    if not changes:
        return
    (field, before, after), *others = changes
    more = (", and so did " + ", ".join(f"config.{f} ({b} -> {a})" for f, b, a in others)
            if others else "")
    raise ValueError(f"config.{field}: changed since this workdir was started ({before} -> "
                     f"{after}){more}; use a new --workdir or restore the old "
                     f"value{'s' if others else ''}")


def record(config, workdir: str) -> None:
    """Writes `config` to `<workdir>/config.json` (process 0), replacing the old record once
    `check` has allowed the change."""
    if jax.process_index() == 0:
        write_atomically(os.path.join(workdir, CONFIG), config_json(config, workdir))
