"""The offline token store of a language model: per window, the teacher's top-k per position.

Written by `python -m jaxdistill.teacher_store` for a `causal_lm` config (`store.token_writer`);
read back by window index like the classification store (`format`), and turned into the
sparse divergences of `jaxdistill.losses.sparse_kd` in the step, which never densify the
teacher to [B, L, V].

Layout of a store directory: `records-IIIII-of-NNNNN.array_record` (record `i` = window `i` of
the split, `group_size:1`) and `store.json` (written last). A record is one element of the
packed little-endian structured dtype `token_record_dtype`:
`index` int64, `log_probs` [L, k] (the teacher's k largest log-probabilities at each position,
largest first: bfloat16 bits as uint16, or float32), `ids` [L, k] (their token ids, in the
smallest unsigned type that holds the vocabulary: uint16 for V <= 65,536, else int32) and
`log_tail` float32 [L] (`log(1 - sum of the k probabilities)`, from the log-sum-exp of the
logits outside the top k, so the missing mass is exact; -inf when k = V). Bytes per token:
`k * (2 + 2) + 4` for bfloat16 and uint16 (260 at k = 64), plus 8 / L for the index.

`store.json`: `format`, `version`, `top_k`, `vocab_size`, `seq_len`, `num_examples`,
`log_prob_dtype`, `files`, `record_bytes`, `bytes_per_token`, `source` (teacher params sha256,
dataset with its builder config, split, windows, tokenizer sha256, vocabulary size, sequence
length), `fingerprint` (SHA-256 of `source`) and `teacher` (informational).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np

from jaxdistill.losses.sparse_kd import TeacherEntries
from jaxdistill.store.format import (
    FIELD_PREFIX,
    StoredRecords,
    TeacherStore,
    check_format,
    read_meta,
    refuse_if_different,
    source_differences,
)

TOKEN_FORMAT, TOKEN_VERSION = "jaxdistill.token_store", 1
LOG_PROB_DTYPES = {"bfloat16": ("<u2", ml_dtypes.bfloat16), "float32": ("<f4", np.float32)}
FIELDS = {"log_probs": FIELD_PREFIX + "token_log_probs", "ids": FIELD_PREFIX + "token_ids",
          "log_tail": FIELD_PREFIX + "token_log_tail"}
TOKEN_GROUPS = {  # what a mismatch is reported as
    "teacher checkpoint": ("teacher_params_sha256",),
    "dataset/split": ("dataset", "split", "num_examples"),
    "tokenizer": ("tokenizer_sha256", "vocab_size"),
    "sequence length": ("seq_len",),
}
# the terms a token store feeds: every per-position divergence of the LM path (and ce)
SPARSE_TERMS = frozenset({"ce", "kd", "fkl", "rkl", "jsd", "tvd", "skl", "srkl"})


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest type that holds token ids 0..V-1 (uint16 up to 65,536, else int32)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def token_record_dtype(top_k: int, vocab_size: int, seq_len: int,
                       log_prob_dtype: str = "bfloat16") -> np.dtype:
    """The structured dtype of one record (see the module doc)."""
    return np.dtype([("index", "<i8"),
                     ("log_probs", LOG_PROB_DTYPES[log_prob_dtype][0], (seq_len, top_k)),
                     ("ids", id_dtype(vocab_size), (seq_len, top_k)),
                     ("log_tail", "<f4", (seq_len,))])


@dataclasses.dataclass(eq=False)
class TokenStoreLayout:
    """What a token store holds per window, without the store (also the stand-in the
    benchmarks use on synthetic data): top `top_k` of `vocab_size` tokens at `seq_len`
    positions, log-probabilities in `log_prob_dtype`."""

    top_k: int
    vocab_size: int
    seq_len: int
    log_prob_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.log_prob_dtype not in LOG_PROB_DTYPES:
            raise ValueError(f"--log_prob_dtype='{self.log_prob_dtype}': choose one of "
                             f"{sorted(LOG_PROB_DTYPES)}")
        if not 0 < self.top_k <= self.vocab_size:
            raise ValueError(f"--top_k={self.top_k}: must be in [1, {self.vocab_size}]")

    @property
    def dtype(self) -> np.dtype:
        """The structured dtype of one record."""
        return token_record_dtype(self.top_k, self.vocab_size, self.seq_len,
                                  self.log_prob_dtype)

    @property
    def bytes_per_token(self) -> float:
        """Record bytes per position (the index's 8 bytes shared by the window)."""
        return self.dtype.itemsize / self.seq_len

    def abstract_fields(self, batch_size: int) -> dict:
        """ShapeDtypeStructs of the fields a batch of `batch_size` windows gets."""
        return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype)
                for k, v in self.padding(1).items()}

    def padding(self, rows: int) -> dict[str, np.ndarray]:
        """Fields for `rows` padding windows: a uniform teacher (their weights are 0)."""
        k, v, length = self.top_k, self.vocab_size, self.seq_len
        log_probs = np.full((rows, length, k), -np.log(v), LOG_PROB_DTYPES[self.log_prob_dtype][1])
        ids = np.broadcast_to(np.arange(k, dtype=id_dtype(v)), (rows, length, k)).copy()
        tail = np.log((v - k) / v) if k < v else -np.inf
        return {FIELDS["log_probs"]: log_probs, FIELDS["ids"]: ids,
                FIELDS["log_tail"]: np.full((rows, length), tail, np.float32)}

    def fields_from_entries(self, log_probs, ids, log_tail) -> dict:
        """Batch fields (as a store's lookup gives them) from float log-probabilities,
        int ids [..., L, k] and log tails [..., L] (a synthetic store of the benchmarks)."""
        return {FIELDS["log_probs"]: log_probs.astype(LOG_PROB_DTYPES[self.log_prob_dtype][1]),
                FIELDS["ids"]: ids.astype(id_dtype(self.vocab_size)),
                FIELDS["log_tail"]: log_tail.astype(np.float32)}


class TokenStore(TokenStoreLayout, StoredRecords):
    """A written token store, opened for random access by window index."""

    def __init__(self, path: str, field: str = "config.teacher.store", meta: dict | None = None):
        if meta is None:
            path, meta = read_meta(path, field)
        check_format(path, meta, field, TOKEN_FORMAT, TOKEN_VERSION)
        super().__init__(int(meta["top_k"]), int(meta["vocab_size"]), int(meta["seq_len"]),
                         meta["log_prob_dtype"])
        self.open_records(path, meta, field)

    def lookup(self, indices) -> dict[str, np.ndarray]:
        """The stored entries of windows `indices` (int [n]; -1 = padding): `teacher_token_
        log_probs` [n, L, k] (bfloat16 or float32), `teacher_token_ids` [n, L, k] (uint16 or
        int32), `teacher_token_log_tail` float32 [n, L]."""
        out, real, recs = self.read(indices)
        if real.any():
            out[FIELDS["log_probs"]][real] = recs["log_probs"].view(
                LOG_PROB_DTYPES[self.log_prob_dtype][1])
            out[FIELDS["ids"]][real] = recs["ids"]
            out[FIELDS["log_tail"]][real] = recs["log_tail"]
        return out


def open_store(path: str, task_name: str, field: str = "config.teacher.store"):
    """The store at `path` (a `TeacherStore` or a `TokenStore`, by its store.json), refused
    when it was written for another kind of task than `task_name`."""
    path, meta = read_meta(path, field)
    is_tokens = meta.get("format") == TOKEN_FORMAT
    if is_tokens != (task_name == "causal_lm"):
        what = "a language model's token store" if is_tokens else "a classifier's store"
        raise ValueError(f"{field}='{path}' is {what}, which task '{task_name}' cannot use; "
                         "write one for this config with `python -m jaxdistill.teacher_store`")
    return TokenStore(path, field, meta) if is_tokens else TeacherStore(path, field)


def token_source(teacher_params_sha256: str, info, split: str) -> dict:
    """What a token store's outputs depend on (its fingerprint is that of this dict)."""
    if split not in info.splits:
        raise ValueError(f"split '{split}' is not in {info.name} ({sorted(info.splits)})")
    return {"teacher_params_sha256": teacher_params_sha256, "dataset": info.tfds_name,
            "split": split, "num_examples": int(info.splits[split]),
            "tokenizer_sha256": info.tokenizer_sha256, "vocab_size": int(info.num_classes),
            "seq_len": int(info.seq_len)}


def check_token_store(store: TokenStore, config, teacher_params_sha256: str, *, info,
                      split: str | None = None) -> None:
    """Raises ValueError naming `store.field` and each difference (teacher checkpoint,
    dataset/split, tokenizer, sequence length) unless `store` was written for this run."""
    expected = token_source(teacher_params_sha256, info, split or config.data.train_split)
    refuse_if_different(store, source_differences(store, expected, TOKEN_GROUPS, config))


def check_run(config, layout: TokenStoreLayout, info) -> None:
    """Refuses a token store (or its stand-in `layout`) whose windows differ from the
    dataset's, and terms it cannot feed: those reading teacher features, and KD on
    standardised logits (which needs all of the teacher's logits). Needs no teacher."""
    field = f"config.teacher.store='{config.teacher.store}'"
    if (layout.vocab_size, layout.seq_len) != (info.num_classes, info.seq_len):
        raise ValueError(f"{field} holds windows of {layout.seq_len} positions over "
                         f"{layout.vocab_size} tokens, but the dataset has {info.seq_len} over "
                         f"{info.num_classes} (config.data.seq_len / vocab_size); write a store "
                         "for this config with `python -m jaxdistill.teacher_store`")
    for name, raw in config.objective.items():
        loss = raw.get("loss", name)
        if loss not in SPARSE_TERMS:
            raise ValueError(f"config.objective.{name}: loss '{loss}' needs the teacher's "
                             "features, which a token store (config.teacher.store) does not "
                             f"hold; use {sorted(SPARSE_TERMS)} or run the teacher online "
                             "(config.teacher.store='')")
        if raw.get("standardize", False):
            raise ValueError(f"config.objective.{name}.standardize: standardising needs all "
                             "of the teacher's logits, not a token store's top k; set it to "
                             "False or run the teacher online (config.teacher.store='')")


def entries_from_batch(batch) -> TeacherEntries:
    """The stored teacher entries a batch carries (fed by `TokenStore.extra_fields`),
    without gradient."""
    return jax.lax.stop_gradient(TeacherEntries(
        batch[FIELDS["log_probs"]], batch[FIELDS["ids"]], batch[FIELDS["log_tail"]]))
