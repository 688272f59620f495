"""Writing a store: the config's teacher, run once (eval mode, jitted, sharded like the trainer,
no augmentation) over a split in index order; process 0 writes (layout in `format`; a
language model's token store: `tokens`, its teacher outputs in `token_writer`)."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import time
import uuid
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module
from jax.experimental import multihost_utils

from jaxdistill import checkpoint, data
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import forward
from jaxdistill.store.dense import topk_entries
from jaxdistill.store.format import (
    FORMAT,
    META,
    VERSION,
    check_config,
    expected_source,
    fingerprint,
    record_dtype,
    teacher_sha256,
)

RECORDS_PER_FILE = 1 << 20
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access by example index


def _teacher_outputs(teacher_def, task, k: int, feature_names, teacher, images):
    x = task.inputs({"image": images}, None, train=False).x  # normalisation only
    logits, features, _ = forward(teacher_def, teacher["params"], teacher["batch_stats"], x,
                                  train=False)
    out = topk_entries(logits, k)
    out.update({f"feature_{n}": features[n].astype(jnp.float32) for n in feature_names})
    return out


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _check_target(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        what = "a store" if os.path.exists(os.path.join(path, META)) else "not an empty directory"
        raise ValueError(f"--store='{path}' is {what}; choose a new directory (a store is "
                         "written once and never overwritten)")


class Plan(NamedTuple):
    """What one kind of store writes: `meta` (its kind's store.json fields), the record
    `dtype`, `run(teacher, batch)` (jitted: the record fields of a batch's rows), the
    `source(teacher_params_sha256)` it is fingerprinted by and a log line."""

    meta: dict
    dtype: np.dtype
    run: Any
    source: Any
    describe: str


def _class_plan(config, setup, teacher_abstract, *, top_k: int, features, split: str,
                log_prob_dtype) -> Plan:
    """The classification store: top-k logits, log-sum-exps and the named features."""
    info, ctx = setup.info, setup.ctx
    if log_prob_dtype is not None:
        raise ValueError(f"--log_prob_dtype='{log_prob_dtype}' is for a language model's token "
                         "store; a classification store keeps float32 logits")
    classes = info.num_classes
    if not 0 <= top_k <= classes:
        raise ValueError(f"--top_k={top_k}: must be in [0, {classes}] (0 = all classes)")
    k = top_k or classes
    image = jax.ShapeDtypeStruct((config.eval_batch_size, *info.image_shape), jnp.float32)
    _, feature_shapes, _ = jax.eval_shape(
        lambda t, x: forward(ctx.teacher_def, t["params"], t["batch_stats"], x, train=False),
        teacher_abstract, image)
    features = tuple(features)
    unknown = sorted(set(features) - set(feature_shapes))
    if unknown:
        raise ValueError(f"--features: {unknown} not among the teacher's features "
                         f"{sorted(feature_shapes)}")
    shapes = {n: tuple(feature_shapes[n].shape[1:]) for n in features}
    teacher_sh = jax.tree.map(lambda x: x.sharding, teacher_abstract)
    outputs = jax.jit(functools.partial(_teacher_outputs, ctx.teacher_def, ctx.task, k, features),
                      in_shardings=(teacher_sh, setup.batch_sharding),
                      out_shardings=setup.batch_sharding)
    return Plan({"format": FORMAT, "version": VERSION, "top_k": k, "num_classes": classes,
                 "features": {name: list(s) for name, s in shapes.items()}},
                record_dtype(k, shapes), lambda teacher, batch: outputs(teacher, batch["image"]),
                lambda sha: expected_source(config, sha, info=info, split=split),
                f"top {k} of {classes} logits, features {list(features)}")


def write_store(config, path: str, *, top_k: int = 0, features=(), split: str | None = None,
                log_prob_dtype: str | None = None, log=print) -> dict:
    """Runs `config`'s teacher over `split` (default config.data.train_split) and writes a
    store to `path` (new or empty): top-k logits (k = `top_k`, 0 = all classes) and the named
    `features`; for a causal_lm config a token store (`store.tokens`: top-k log-probabilities
    per position in `log_prob_dtype`, default bfloat16). Every process takes part; process 0
    writes. Returns the store's metadata."""
    config = copy.deepcopy(config)
    if not config.teacher.model:
        raise ValueError("config.teacher.model is empty: a store holds a teacher's outputs")
    if not config.teacher.checkpoint:
        raise ValueError("config.teacher.checkpoint is empty; point it at the teacher run's "
                         "workdir")
    check_config(config, path, "--store")
    if "store" in config.teacher:  # the store being written cannot feed its own teacher
        with config.unlocked():
            config.teacher.store = ""
    path = os.path.abspath(os.path.expanduser(path))
    _check_target(path)
    setup = prepare_run(config)
    info = setup.info
    split = split or config.data.train_split
    if split not in info.splits:
        raise ValueError(f"--split='{split}' is not a split of {info.name}: {sorted(info.splits)}")
    abstract = {n: setup.teacher_abstract[n] for n in ("params", "batch_stats")}
    if setup.task.name == "causal_lm":
        from jaxdistill.store.token_writer import token_plan
        plan = token_plan(config, setup, abstract, top_k=top_k, features=features, split=split,
                          log_prob_dtype=log_prob_dtype)
    elif setup.task.name == "classification":
        plan = _class_plan(config, setup, abstract, top_k=top_k, features=features, split=split,
                           log_prob_dtype=log_prob_dtype)
    else:
        raise ValueError(f"config.task: task '{setup.task.name}' has no teacher store")

    teacher = checkpoint.load_teacher(config.teacher.checkpoint, abstract)
    source = plan.source(teacher_sha256(teacher))
    batches = data.make_eval_iterator(info, split=split, reader=config.data.reader,
                                      global_batch_size=config.eval_batch_size,
                                      sharding=setup.batch_sharding)
    n = info.splits[split]
    num_files = max(1, math.ceil(n / RECORDS_PER_FILE))
    files = [f"records-{i:05d}-of-{num_files:05d}.array_record" for i in range(num_files)]
    meta = {**plan.meta, "num_examples": n, "files": files, "record_bytes": plan.dtype.itemsize,
            "source": source, "fingerprint": fingerprint(source),
            "teacher": {"model": config.teacher.model, "kwargs": config.teacher.kwargs.to_dict(),
                        "dtype": config.teacher.dtype,
                        "checkpoint": checkpoint.teacher_directory(config.teacher.checkpoint)}}
    writing = jax.process_index() == 0
    tmp = f"{path}.incomplete-{uuid.uuid4().hex[:8]}"
    writer, written, start = None, 0, time.time()
    if writing:
        log(f"teacher store: {config.teacher.model} on {info.name}[{split}] ({n} examples), "
            f"{plan.describe} -> {path}")
        os.makedirs(tmp)
    try:
        for batch in batches:
            out = {name: _host(v) for name, v in plan.run(teacher, batch).items()}
            index, mask = _host(batch["index"]), _host(batch["mask"])
            if not writing:
                continue
            rows = np.flatnonzero(mask > 0)
            records = np.zeros(len(rows), plan.dtype)
            records["index"] = index[rows]
            for name, value in out.items():
                records[name] = value[rows]
            for record in records:
                if int(record["index"]) != written:
                    raise RuntimeError(f"example {written} expected, got {record['index']}")
                if written % RECORDS_PER_FILE == 0:
                    if writer is not None:
                        writer.close()
                    writer = array_record_module.ArrayRecordWriter(
                        os.path.join(tmp, files[written // RECORDS_PER_FILE]), WRITER_OPTIONS)
                writer.write(record.tobytes())
                written += 1
        if writing:
            writer.close()
            if written != n:
                raise RuntimeError(f"wrote {written} of {n} examples")
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f, indent=1)
            _check_target(path)
            if os.path.isdir(path):
                os.rmdir(path)
            os.replace(tmp, path)
            log(f"teacher store: wrote {n} examples in {time.time() - start:.1f} s, "
                f"fingerprint {meta['fingerprint'][:12]}...")
    except BaseException:
        if writing:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    multihost_utils.sync_global_devices("jaxdistill_teacher_store_written")
    return meta
