"""A population's member settings: per-member overrides of a run config
(`config.population.members`), each member's equivalent config, and their validation.
See `jaxdistill.population` for the run."""

from __future__ import annotations

import copy
import inspect
import json

import ml_collections

from jaxdistill.defaults import base_config, set_fields
from jaxdistill.objective import MEAN
from jaxdistill.terms import TERMS

FIELD = "config.population"
OPTIMIZER_FIELDS = ("learning_rate", "weight_decay", "warmup_steps")


def _term_field(config, term: str, field: str):
    """(value in `config`, default) of a term's field; ValueError if it cannot vary."""
    where = f"objective.{term}.{field}"
    if term not in config.objective:
        raise ValueError(f"'{where}': the objective has no term '{term}'; it has "
                         f"{sorted(config.objective)}")
    raw = dict(config.objective[term])
    if field == "weight":
        return raw.get("weight", 1.0)
    spec = TERMS.get(raw.get("loss", term))
    params = inspect.signature(spec.fn).parameters if spec else {}
    floats = sorted(n for n, p in params.items() if p.annotation in (float, "float")
                    and n != "learning_rate")
    if field not in floats:
        raise ValueError(f"'{where}': a member may set a term's weight or a float field of its "
                         f"loss ({', '.join(floats) or 'none'} for '{term}'); the rest is shared")
    if field == "temperature" and raw.get("teacher") == MEAN:
        raise ValueError(f"'{where}': a teacher='mean' term's temperature is shared")
    return raw.get(field, params[field].default)


def check_member_field(config, key: str) -> None:
    """Raises a ValueError unless `key` is a field that population members may set."""
    parts = key.split(".") if isinstance(key, str) else []
    if parts == ["seed"] or (len(parts) == 2 and parts[0] == "optimizer"
                             and parts[1] in OPTIMIZER_FIELDS):
        return
    if len(parts) == 3 and parts[0] == "objective":
        _term_field(config, parts[1], parts[2])
        return
    raise ValueError(f"{key!r} cannot differ between members; a member sets seed, "
                     f"optimizer.{{{', '.join(OPTIMIZER_FIELDS)}}}, objective.<term>.weight or "
                     "objective.<term>.<float field>")


def overrides(config) -> list[dict]:
    """Each member's overrides ({} for every member when `config.population.members` is
    empty)."""
    members = config.population.members
    return [dict(m) for m in members] if members else [{} for _ in range(config.population.size)]


def drop_population(c: ml_collections.ConfigDict) -> None:
    """Sets `c.population` (unlocked) to the base config's: a single run."""
    c.population = copy.deepcopy(base_config().population)


def member_configs(config) -> list[ml_collections.ConfigDict]:
    """The config of each member's equivalent separate run: `config` with the member's
    overrides, no population, and the shared data order made explicit (`data.seed`)."""
    out = []
    for member in overrides(config):
        c = copy.deepcopy(config)
        with c.unlocked():
            drop_population(c)
            if c.data.seed < 0:
                c.data.seed = config.seed
            set_fields(c, dict(sorted(member.items())))
        out.append(c)
    return out


def check_population(config) -> None:
    """One-line ValueErrors naming `config.population.*` for bad population settings
    (reads nothing; the mesh axis's size is checked by `prepare_population`)."""
    from jaxdistill import validate
    pop = config.population
    n, members = pop.size, pop.members
    if not n:
        if members or pop.axis:
            raise ValueError(f"{FIELD}.size is 0, so {FIELD}.members / .axis do nothing; set "
                             f"{FIELD}.size to the number of members")
        return
    if n < 0:
        raise ValueError(f"{FIELD}.size must be >= 0, got {n}")
    if members and len(members) != n:
        raise ValueError(f"{FIELD}.members has {len(members)} entries for {FIELD}.size {n}; give "
                         "one dict per member (or none: every member is the base run)")
    if pop.axis and pop.axis not in config.mesh.axes:
        raise ValueError(f"{FIELD}.axis {pop.axis!r} is not in config.mesh.axes "
                         f"{tuple(config.mesh.axes)}; use one of them or ''")
    if pop.axis and config.mesh.student_rule != "replicated":
        raise ValueError(f"{FIELD}.axis: members split over a mesh axis need "
                         "config.mesh.student_rule='replicated'; set one or the other")
    if config.mesh.teacher_devices:
        raise ValueError(f"{FIELD}: a population runs its teacher in its own step; set "
                         "config.mesh.teacher_devices = 0")
    for i, member in enumerate(members):
        if not isinstance(member, (dict, ml_collections.ConfigDict)):
            raise ValueError(  # noqa: TRY004 (a user error, reported like the others)
                f"{FIELD}.members[{i}] must be a dict of dotted fields, got "
                             f"{member!r}; e.g. {{'objective.kd.temperature': 2.0}}")
        for key in member:
            try:
                check_member_field(config, key)
            except ValueError as e:
                raise ValueError(f"{FIELD}.members[{i}]: {e}") from None
    for i, member_cfg in enumerate(member_configs(config)):
        try:
            validate.check_config(member_cfg)
        except ValueError as e:
            raise ValueError(f"{FIELD}.members[{i}]: {e}") from None


def varying(config) -> list[str]:
    """The overridden fields whose value differs between members (sorted)."""
    configs = member_configs(config)
    keys = sorted({k for m in overrides(config) for k in m})
    return [k for k in keys if len({json.dumps(member_value(c, k)) for c in configs}) > 1]


def member_value(config, key: str):
    """The value of an overridable field `key` in `config` (a term field: its loss default
    when unset)."""
    parts = key.split(".")
    if parts[0] == "objective":
        return _term_field(config, parts[1], parts[2])
    node = config
    for name in parts:
        node = node[name]
    return node
