"""A run's models from Hugging Face checkpoints: the teacher's weights from
`config.teacher.hf_checkpoint`, the student's initial weights from
`config.student.hf_checkpoint` (with `config.student.hf_layers`, the encoder layers of it
that it keeps: e.g. a 2-layer student from a 6-layer teacher's layers 0 and 5).

The registry model named in the config must have the checkpoint's architecture (the same
parameter tree and shapes): `check_fits` compares them from config.json alone, before
anything compiles; `read_params` fills the run's abstract parameters (their dtypes and
shardings) from the checkpoint's tensors, each device receiving only its own shard.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill import hf, parallel
from jaxdistill.hf import files


def _family(path: str, layers) -> tuple[dict, object, dict]:
    """(config.json, family module, its extra keyword arguments for `layers`)."""
    hf_config = files.read_config(path)
    module = hf.family(hf_config, path)
    if not layers:
        return hf_config, module, {}
    if "layers" not in inspect.signature(module.builder).parameters:
        raise ValueError(f"model_type {hf_config['model_type']!r} has no layer selection; "
                         "leave hf_layers empty")
    return hf_config, module, {"layers": tuple(int(i) for i in layers)}


def _shapes(tree) -> dict[str, tuple]:
    """{dotted parameter path: shape} (the names `hf.fill` uses)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(parallel._path(p)): tuple(x.shape) for p, x in leaves}


def check_fits(path: str, abstract_params, field: str, layers=()) -> None:
    """Raises a one-line ValueError naming `field` unless the checkpoint in `path` (keeping
    `layers`) has exactly the parameter shapes of `abstract_params`; reads config.json only."""
    try:
        hf_config, module, extra = _family(path, layers)
        make, _ = module.builder(hf_config, dtype=jnp.float32, **extra)
        stored = _shapes(nnx.state(nnx.eval_shape(lambda: make(nnx.Rngs(0))), nnx.Param))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{field}: {e}") from None
    wanted = _shapes(abstract_params)
    for name in sorted(set(wanted) | set(stored)):
        if wanted.get(name) != stored.get(name):
            raise ValueError(f"{field}: '{path}' does not fit the model: parameter '{name}' is "
                             f"{stored.get(name, 'missing')} in the checkpoint but "
                             f"{wanted.get(name, 'absent')} in the model; check the model name "
                             "and kwargs against the checkpoint's config.json")


def read_params(path: str, abstract_params, field: str, layers=()):
    """`abstract_params` (an nnx.State of ShapeDtypeStructs with shardings) filled with the
    weights of the checkpoint in `path` (keeping `layers`), cast to their dtypes."""
    check_fits(path, abstract_params, field, layers)
    hf_config, module, extra = _family(path, layers)
    arrays = module.arrays(hf_config, files.read_tensors(path), **extra)
    return hf.fill(abstract_params, arrays, where=f"{field} '{path}'")


def read_teacher(path: str, abstract_vars: dict, field: str = "config.teacher.hf_checkpoint"):
    """The teacher's variables ({'params', 'batch_stats'}, as `checkpoint.load_teacher`
    returns them) from the checkpoint in `path`, in the dtypes and shardings of
    `abstract_vars` (a Hugging Face model has no batch statistics)."""
    if jax.tree.leaves(abstract_vars["batch_stats"]):
        raise ValueError(f"{field}: the teacher model has batch statistics, which a Hugging "
                         "Face checkpoint does not hold")
    return {"params": read_params(path, abstract_vars["params"], field),
            "batch_stats": abstract_vars["batch_stats"]}


def start_student(state, student_cfg, abstract_state):
    """A freshly initialised train `state` with the student's parameters read from
    config.student.hf_checkpoint (its hf_layers), when that is set; else `state`."""
    if not student_cfg.hf_checkpoint:
        return state
    params = read_params(student_cfg.hf_checkpoint, abstract_state.params["student"],
                         "config.student.hf_checkpoint", student_cfg.hf_layers)
    return state.replace(params={**state.params, "student": params})
