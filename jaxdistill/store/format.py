"""The store on disk, reading it back by example index, and the checks that it fits a run.

Layout of a store directory:

- `records-IIIII-of-NNNNN.array_record`: one record per example of the split, record `i` =
  example `i` (files in order; grain's `ArrayRecordDataSource` joins them into one index space),
  written with `group_size:1` for random access. A record is the raw bytes of one element of
  the NumPy structured dtype `record_dtype(k, features)` (little endian, packed):
  `index` int64 (the example index, checked on read), `values` float32 [k] (the top-k logits,
  descending), `indices` int32 [k] (their classes), `logsumexp` float32 (over ALL logits),
  `tail_logsumexp` float32 (over the logits outside the top k; -inf when k = C), then one
  float32 field `feature_<name>` per stored feature, in the order of `store.json`.
- `store.json`, written last (its presence marks a complete store): `format`, `version`,
  `top_k`, `num_classes`, `num_examples`, `features` ({name: shape}), `files`, `record_bytes`,
  `source` (what the outputs depend on), `fingerprint` (SHA-256 of `source`) and `teacher`
  (model, kwargs, dtype, checkpoint path: informational, not fingerprinted).

`source` = teacher_params_sha256 (`teacher_sha256` of the restored teacher: its params and
BatchNorm statistics), dataset, split, num_examples, mean, std, image_shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import grain
import numpy as np

from jaxdistill import checkpoint

FORMAT, VERSION, META = "jaxdistill.teacher_store", 1, "store.json"
FIELD_PREFIX = "teacher_"  # every field `lookup` returns starts with it
FEATURE_PREFIX = FIELD_PREFIX + "feature_"
_FIELDS = {"values": "teacher_topk_values", "indices": "teacher_topk_indices",
           "logsumexp": "teacher_logsumexp", "tail_logsumexp": "teacher_tail_logsumexp"}
GROUPS = {  # what a mismatch is reported as
    "teacher checkpoint": ("teacher_params_sha256",),
    "dataset/split": ("dataset", "split", "num_examples"),
    "preprocessing": ("mean", "std", "image_shape"),
}


def record_dtype(top_k: int, features: dict[str, tuple]) -> np.dtype:
    """The structured dtype of one record (see the module doc)."""
    fields = [("index", "<i8"), ("values", "<f4", (top_k,)), ("indices", "<i4", (top_k,)),
              ("logsumexp", "<f4"), ("tail_logsumexp", "<f4")]
    fields += [(f"feature_{name}", "<f4", tuple(shape)) for name, shape in features.items()]
    return np.dtype(fields)


def teacher_sha256(teacher_vars: dict) -> str:
    """The teacher's fingerprint: `checkpoint.params_sha256` over its {'params',
    'batch_stats'} (BatchNorm statistics change its outputs too; other keys are ignored)."""
    return checkpoint.params_sha256({k: teacher_vars[k] for k in ("params", "batch_stats")})


def expected_source(config, teacher_params_sha256: str, *, info=None, split: str | None = None
                    ) -> dict:
    """The `source` a store must have to serve `config` (split: config.data.train_split)."""
    if info is None:
        from jaxdistill import data
        info = data.prepare(config.data.name, config.data.data_dir or None)
    split = split or config.data.train_split
    if split not in info.splits:
        raise ValueError(f"split '{split}' is not in {config.data.name} ({sorted(info.splits)})")
    return {"teacher_params_sha256": teacher_params_sha256, "dataset": config.data.name,
            "split": split, "num_examples": int(info.splits[split]),
            "mean": [float(m) for m in config.data.mean], "std": [float(s) for s in config.data.std],
            "image_shape": [int(d) for d in info.image_shape]}


def fingerprint(source: dict) -> str:
    """SHA-256 over the canonical JSON of a `source` dict."""
    return hashlib.sha256(json.dumps(source, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def expected_fingerprint(config, teacher_params_sha256: str, *, info=None, split=None) -> str:
    """The fingerprint a store written for `config`'s teacher, data and preprocessing has."""
    return fingerprint(expected_source(config, teacher_params_sha256, info=info, split=split))


def _store_field(config, store) -> str:
    return store if store is not None else str(config.teacher.get("store", "") or "")


def check_config(config, store: str | None = None, field: str = "config.teacher.store") -> None:
    """Refuses a store (`store`, or config.teacher.store) with random augmentation: stored
    outputs are the teacher's on un-augmented images only."""
    path = _store_field(config, store)
    if path and config.data.augment != "none":
        raise ValueError(
            f"{field}='{path}' holds the teacher's outputs on un-augmented images, "
            f"which do not describe the randomly augmented ones of config.data.augment="
            f"'{config.data.augment}'; set config.data.augment='none' or run the teacher online "
            "(config.teacher.store='')")


@dataclasses.dataclass(eq=False)
class StoreLayout:
    """What a store holds per example, without the store: top-k logits of `num_classes`
    classes and float32 `features` ({name: shape}). Also a stand-in for a store where only
    shapes matter (benchmarks on synthetic data)."""

    top_k: int
    num_classes: int
    features: dict[str, tuple] = dataclasses.field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        """The structured dtype of one record."""
        return record_dtype(self.top_k, self.features)

    def abstract_fields(self, batch_size: int) -> dict:
        """ShapeDtypeStructs of the fields a batch of `batch_size` rows gets from the store."""
        import jax
        return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype)
                for k, v in self.padding(1).items()}

    def padding(self, rows: int) -> dict[str, np.ndarray]:
        """Fields for `rows` padding rows: a uniform teacher (all logits 0), zero features."""
        k, c = self.top_k, self.num_classes
        out = {"teacher_topk_values": np.zeros((rows, k), np.float32),
               "teacher_topk_indices": np.tile(np.arange(k, dtype=np.int32), (rows, 1)),
               "teacher_logsumexp": np.full((rows,), np.log(c), np.float32),
               "teacher_tail_logsumexp": np.full(
                   (rows,), np.log(c - k) if k < c else -np.inf, np.float32)}
        for name, shape in self.features.items():
            out[FEATURE_PREFIX + name] = np.zeros((rows, *shape), np.float32)
        return out

    @staticmethod
    def batch_fields(record_fields: dict) -> dict:
        """Record fields (`values`, `indices`, `logsumexp`, `tail_logsumexp`, `feature_<name>`)
        under the names a batch carries them (`teacher_topk_values`, ...)."""
        return {_FIELDS.get(k, FIELD_PREFIX + k): v for k, v in record_fields.items()
                if k != "index"}


def read_meta(path: str, field: str) -> tuple[str, dict]:
    """(absolute path, its `store.json`) of a written store of either kind (`jaxdistill.store.
    tokens` holds the LM's); a ValueError naming `field` when there is none."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{field}='{path}' is not a teacher store (no {META}; an "
                         "interrupted write leaves none); write one with `python -m "
                         "jaxdistill.teacher_store --config=... --store=DIR`")
    with open(meta_path) as f:
        return path, json.load(f)


def check_format(path: str, meta: dict, field: str, fmt: str, version: int) -> None:
    """Raises unless `meta` is that of a `fmt` store of `version`."""
    if (meta.get("format"), meta.get("version")) != (fmt, version):
        raise ValueError(f"{field}='{path}': {META} is not a {fmt} v{version} store")


class StoredRecords:
    """The records of a written store, read by example index (thread-safe reads); mixed
    into a layout class that defines `dtype` (one record) and `padding(rows)`."""

    def open_records(self, path: str, meta: dict, field: str) -> None:
        """Opens the record files `meta` names under `path`, checking count and size."""
        self.path, self.meta, self.field = path, meta, field
        self.num_examples = int(meta["num_examples"])
        files = [os.path.join(path, name) for name in meta["files"]]
        self._source = grain.sources.ArrayRecordDataSource(files)  # readers tuned for random access
        if len(self._source) != self.num_examples or self.dtype.itemsize != meta["record_bytes"]:
            raise ValueError(f"{field}='{path}' is damaged: {len(self._source)} records of "
                             f"{meta['record_bytes']} bytes, {META} says "
                             f"{self.num_examples} of {self.dtype.itemsize}")

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def source(self) -> dict:
        return self.meta["source"]

    def __len__(self) -> int:
        return self.num_examples

    def read(self, indices) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(padding fields for every row of `indices` (int [n]; -1 = padding row), the
        mask of real rows, their records as a structured array)."""
        indices = np.asarray(indices).astype(np.int64).reshape(-1)
        bad = (indices < -1) | (indices >= self.num_examples)
        if bad.any():
            raise ValueError(f"{self.field}='{self.path}' holds examples 0..{self.num_examples - 1}"
                             f" of {self.source['dataset']}[{self.source['split']}]; asked for "
                             f"{indices[bad][:5].tolist()}")
        real = indices >= 0
        records = self._source.__getitems__(indices[real].tolist()) if real.any() else []
        recs = np.frombuffer(b"".join(records), self.dtype)
        if not np.array_equal(recs["index"], indices[real]):
            raise ValueError(f"{self.field}='{self.path}' is damaged: records do not hold "
                             "the examples they are indexed by")
        return self.padding(len(indices)), real, recs

    def extra_fields(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The data layer's hook: `make_train_iterator(..., extra_fields=store.extra_fields)`
        adds the stored outputs of each host batch's rows (by its `index`)."""
        return self.lookup(batch["index"])


class TeacherStore(StoreLayout, StoredRecords):
    """A written classification store, opened for random access by example index."""

    def __init__(self, path: str, field: str = "config.teacher.store"):
        path, meta = read_meta(path, field)
        check_format(path, meta, field, FORMAT, VERSION)
        super().__init__(int(meta["top_k"]), int(meta["num_classes"]),
                         {k: tuple(v) for k, v in meta["features"].items()})
        self.open_records(path, meta, field)

    def lookup(self, indices) -> dict[str, np.ndarray]:
        """The stored outputs of examples `indices` (int [n]; -1 = padding row): `teacher_topk_
        values` f32 [n, k], `teacher_topk_indices` i32 [n, k], `teacher_logsumexp` f32 [n],
        `teacher_tail_logsumexp` f32 [n], `teacher_feature_<name>` f32 [n, ...]."""
        out, real, recs = self.read(indices)
        if real.any():
            for name, key in _FIELDS.items():
                out[key][real] = recs[name]
            for name in self.features:
                out[FEATURE_PREFIX + name][real] = recs[f"feature_{name}"]
        return out


def check_store(store: TeacherStore, config, teacher_params_sha256: str, *, info=None,
                split: str | None = None) -> None:
    """Raises ValueError naming `store.field` and each difference (teacher checkpoint,
    dataset/split, preprocessing, class count) unless `store` was written for this run."""
    from jaxdistill.store import tokens  # imports this module
    if isinstance(store, tokens.TokenStore):
        tokens.check_token_store(store, config, teacher_params_sha256, info=info, split=split)
        return
    check_config(config, store.path, store.field)
    expected = expected_source(config, teacher_params_sha256, info=info, split=split)
    diffs = source_differences(store, expected, GROUPS, config)
    if info is not None and store.num_classes != info.num_classes:
        diffs.append(f"it has {store.num_classes} classes, the dataset {info.num_classes}")
    refuse_if_different(store, diffs)


def source_differences(store, expected: dict, groups: dict, config) -> list[str]:
    """What differs between `store.source` and the `expected` source, group by group (and
    a fingerprint that is not that of the store's own source)."""
    diffs = []
    for group, keys in groups.items():
        for key in keys:
            stored, wanted = store.source.get(key), expected[key]
            if stored != wanted:
                if key == "teacher_params_sha256":
                    stored, wanted = str(stored)[:12] + "...", wanted[:12] + "..."
                    wanted += f" (config.teacher.checkpoint='{config.teacher.checkpoint}')"
                diffs.append(f"{group}: {key} is {stored} in the store but {wanted} in this run")
    if not diffs and store.fingerprint != fingerprint(expected):
        diffs.append(f"fingerprint {store.fingerprint[:12]}... is not that of its own source")
    return diffs


def refuse_if_different(store, diffs: list[str]) -> None:
    """The one-line refusal of a store that was not written for this run (if `diffs`)."""
    if diffs:
        raise ValueError(
            f"{store.field}='{store.path}' was not written for this run: " + "; ".join(diffs)
            + ". Write a store for it with `python -m jaxdistill.teacher_store --config=... "
            "--store=NEW_DIR` (same config and overrides), or run the teacher online "
            f"({store.field}='')")
