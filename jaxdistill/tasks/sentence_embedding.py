"""Sentence-embedding distillation: an encoder student learns a frozen encoder teacher's
sentence embeddings (e.g. all-MiniLM-L6-v2 loaded with `jaxdistill.hf`).

A batch holds one sentence per row (`data.sentence_builders`): `inputs` (word-piece ids),
`segment_ids` (1 on real tokens, 0 on padding: the models' `attention_mask`), `positions`,
`targets`, `weights`, all [B, L], plus `index` [B] (and `mask` [B] in eval). The models'
`embedding` feature is the masked mean of their last hidden states; the sentence embedding
is its L2 normalisation (sentence-transformers' Pooling(mean) + Normalize). There are no
labels: the terms' `labels` are the token mask [B, L] (what the token-level terms average
over), every sentence weighs 1, and eval reports the mean teacher-student cosine of the
normalised embeddings and their mean squared distance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from tokenizers import Tokenizer

from jaxdistill.data.builders import build_offline
from jaxdistill.data.sentence_builders import SENTENCE_BUILDERS
from jaxdistill.data.source import DatasetInfo, default_data_dir
from jaxdistill.data.text_builders import TOKENIZER_FILE, text_config
from jaxdistill.losses import cosine_distance
from jaxdistill.tasks.base import ModelInputs
from jaxdistill.tasks.causal_lm import TOKEN_FIELDS


def prepare(data_cfg) -> DatasetInfo:
    """The sentence dataset of `config.data` (name, data_dir, seq_len, max_documents,
    tokenizer), built offline into data_dir if missing."""
    if data_cfg.name not in SENTENCE_BUILDERS:
        raise ValueError(f"config.data.name: '{data_cfg.name}' is not a sentence dataset; task "
                         f"'sentence_embedding' reads one of {sorted(SENTENCE_BUILDERS)}")
    tokenizer = os.path.expanduser(data_cfg.tokenizer)
    if not os.path.isfile(tokenizer):
        raise ValueError("config.data.tokenizer must be the path of the teacher's tokenizer.json "
                         f"(sentences are tokenised with it), got {data_cfg.tokenizer!r}")
    if not isinstance(data_cfg.seq_len, int) or data_cfg.seq_len < 3:
        raise ValueError(f"config.data.seq_len must be an integer >= 3 ([CLS], a token, [SEP]), "
                         f"got {data_cfg.seq_len!r}")
    vocab = Tokenizer.from_file(tokenizer).get_vocab_size()
    data_dir = os.path.expanduser(data_cfg.data_dir or default_data_dir())
    config = text_config(vocab, data_cfg.seq_len, data_cfg.max_documents, tokenizer)
    builder = build_offline(data_cfg.name, data_dir, config)
    metadata = dict(builder.info.metadata)
    return DatasetInfo(name=data_cfg.name, data_dir=data_dir, num_classes=vocab, image_shape=(),
                       splits={k: v.num_examples for k, v in builder.info.splits.items()},
                       kind="tokens", seq_len=data_cfg.seq_len,
                       tokenizer=os.fspath(builder.data_path / TOKENIZER_FILE),
                       tokenizer_sha256=metadata["tokenizer_sha256"], metadata=metadata,
                       builder_config=config.name)


def _cosine(v) -> jax.Array:
    """Per-sentence cosine of the student's and the teacher's embeddings."""
    return 1.0 - cosine_distance(v.student_features["embedding"],
                                 v.teacher_features["embedding"])


class SentenceEmbedding:
    """Encoder teacher and student on one tokenizer's sentences (see module doc)."""

    name = "sentence_embedding"
    input_kind = "tokens"
    model_kind = "encoder"
    input_dtype = jnp.int32
    unit = "sentences"
    best_metric = "cosine"
    best_mode = "max"
    eval_feature = "embedding"  # what eval compares (the models have no logits)
    # pooled-embedding terms, token-level hidden-state and attention transfer, relations
    terms = frozenset({"embed_cos", "embed_mse", "hidden_mse", "attn_kl", "rkd", "pkt", "sp"})

    def __init__(self, config):
        if config.data.augment != "none":
            raise ValueError(f"config.data.augment: '{config.data.augment}' augments images; "
                             "task 'sentence_embedding' reads tokens, so set it to 'none'")
        if not config.teacher.model:
            raise ValueError("config.teacher.model: task 'sentence_embedding' distils a "
                             "teacher's embeddings (there are no labels); set a teacher")
        if not (config.teacher.checkpoint or config.teacher.hf_checkpoint or config.teacher.store):
            raise ValueError("config.teacher.hf_checkpoint: task 'sentence_embedding' has no labels "
                             "to train its teacher on; load a trained one (teacher.hf_checkpoint "
                             "or teacher.checkpoint)")

    def prepare_data(self, data_cfg) -> DatasetInfo:
        return prepare(data_cfg)

    def model_io(self, info: DatasetInfo) -> tuple[int, tuple[int, ...]]:
        return info.num_classes, (info.seq_len,)

    def abstract_batch(self, info: DatasetInfo, batch_size: int) -> dict:
        tokens = jax.ShapeDtypeStruct((batch_size, info.seq_len), jnp.int32)
        return {**{k: tokens for k in TOKEN_FIELDS},
                "weights": jax.ShapeDtypeStruct((batch_size, info.seq_len), jnp.float32),
                "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def inputs(self, batch: Mapping, rng, *, train: bool):
        return ModelInputs(batch["inputs"], {"attention_mask": batch["segment_ids"]})

    def targets(self, batch: Mapping) -> jax.Array:
        return batch["segment_ids"]

    def weights(self, batch: Mapping) -> jax.Array:
        return jnp.ones(batch["index"].shape, jnp.float32)

    def train_metrics(self, has_teacher: bool) -> dict:
        return {"cosine": _cosine} if has_teacher else {}

    def eval_sums(self, student_embedding, teacher_embedding, batch: Mapping) -> dict:
        """Over the batch's real sentences: the count, the summed cosine of the normalised
        embeddings and their summed squared distance."""
        mask = batch["mask"]
        distance = cosine_distance(student_embedding, teacher_embedding)
        return {"count": jnp.sum(mask), "cosine": jnp.sum(mask * (1.0 - distance)),
                "sq_distance": jnp.sum(mask * 2.0 * distance)}

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Mean cosine and mean squared distance ||s - t||^2 of the unit embeddings."""
        count = max(float(sums["count"]), 1.0)
        return {"cosine": float(sums["cosine"]) / count,
                "sq_distance": float(sums["sq_distance"]) / count}

    def items_per_step(self, batch_size: int, info) -> int:
        return batch_size
