"""Causal LM distillation between a teacher and a student with different tokenizers.

The data (`data.xtok_builders`, built offline from `config.data.name`'s corpus) holds each
text window twice: the student's BPE tokens (the `causal_lm` fields, [B, L]) and the
teacher's byte tokens (`teacher_*`, [B, config.data.teacher_seq_len]), with `align` [B, L]:
the teacher position aligned with each student position (-1: none). A new task rather
than options of `causal_lm` because the batch schema, what the teacher is called on, its
vocabulary and the eval all differ, while `causal_lm` stays one tokenizer's task.

The teacher runs on its own tokens; its logits are gathered at the aligned positions
(`align_teacher`), so every term sees teacher logits [B, L, Vt] beside the student's
[B, L, Vs] position by position, plus the features `aligned` (1.0 where a position has a
teacher partner) and `token_map` (each student token's first teacher unit). Terms: `ce`
and the cross-tokenizer terms `uld` and `xtok_kl` (`losses.cross_tokenizer`).

Eval: the student's token NLL / perplexity / accuracy; the teacher's NLL over the same
text per student token (`teacher_perplexity`: comparable with the student's, since the
teacher's weighted targets cover exactly the student's target text) and per byte
(`teacher_bits_per_byte`, `teacher_accuracy` per byte); at aligned positions the top-1
agreement of the teacher with the student's merged next-unit distribution and their KL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import data
from jaxdistill.data import builders, source, tokenizer, xtok_builders, xtok_packing
from jaxdistill.losses import cross_entropy
from jaxdistill.losses.cross_tokenizer import merged_kl, merged_log_probs
from jaxdistill.tasks.base import ModelInputs, top1_correct
from jaxdistill.tasks.causal_lm import CausalLM

ALIGNED, TOKEN_MAP = "aligned", "token_map"  # the teacher features `align_teacher` adds
XTOK_TERMS = frozenset({"uld", "xtok_kl"})  # the terms that compare different vocabularies


def dataset_name(corpus: str) -> str:
    """The paired dataset of a corpus (`config.data.name`)."""
    return f"{corpus}_xtok"


def prepare(data_cfg) -> data.DatasetInfo:
    """Builds (once) and describes the paired dataset of `config.data`'s corpus."""
    name = dataset_name(data_cfg.name)
    if name not in xtok_builders.XTOK_BUILDERS:
        corpora = sorted(xtok_builders.CORPUS_OF.values())
        raise ValueError(f"config.data.name: task 'cross_tokenizer' reads a corpus of plain "
                         f"documents, one of {corpora}; got {data_cfg.name!r}")
    path = data_cfg.tokenizer and os.path.expanduser(data_cfg.tokenizer)
    source._check_text_options(data_cfg.vocab_size, data_cfg.seq_len, data_cfg.max_documents,
                               path)
    teacher_len = int(data_cfg.teacher_seq_len) or 4 * int(data_cfg.seq_len)
    data_dir = os.path.expanduser(data_cfg.data_dir or data.default_data_dir())
    config = xtok_builders.xtok_config(data_cfg.vocab_size, data_cfg.seq_len, teacher_len,
                                       data_cfg.max_documents, path)
    builder = builders.build_offline(name, data_dir, config)
    metadata = dict(builder.info.metadata)
    return data.DatasetInfo(
        name=name, data_dir=data_dir, num_classes=data_cfg.vocab_size, image_shape=(),
        splits={k: v.num_examples for k, v in builder.info.splits.items()}, kind="tokens",
        seq_len=data_cfg.seq_len,
        tokenizer=os.fspath(builder.data_path / source.TOKENIZER_FILE),
        tokenizer_sha256=metadata["tokenizer_sha256"],
        metadata={**metadata, "teacher_seq_len": teacher_len, "extra_fields": {
            **{k: (teacher_len, np.dtype(v).name)
               for k, v in xtok_packing.TEACHER_FIELDS.items()},
            "align": (data_cfg.seq_len, "int32")}}, builder_config=config.name)


class CrossTokenizer(CausalLM):
    """Byte-level teacher, BPE student, one text window (see module doc)."""

    name = "cross_tokenizer"
    terms = frozenset({"ce"}) | XTOK_TERMS

    def __init__(self, config):
        super().__init__(config)
        for field, value, why in (
                ("lm.chunk_size", config.lm.chunk_size, ("set it to 0: the teacher's logits "
                                                         "are gathered at the aligned positions, "
                                                         "whole")),
                ("teacher.store", config.teacher.store, "run the teacher online"),
                ("extra_teachers", len(config.extra_teachers), "distil from one teacher")):
            if value:
                raise ValueError(f"config.{field}: task 'cross_tokenizer' does not support it; "
                                 f"{why}")
        self._token_map = None

    def prepare_data(self, data_cfg) -> data.DatasetInfo:
        info = prepare(data_cfg)
        self.bind(info)
        return info

    def bind(self, info: data.DatasetInfo) -> None:
        """Reads the student tokenizer's map onto the teacher's units (once)."""
        if self._token_map is None:
            token_map = xtok_builders.first_teacher_token(tokenizer.load_tokenizer(info))
            units = info.metadata["teacher_vocab_size"]
            if len(np.unique(token_map)) != units:
                raise ValueError(f"{info.tokenizer}: its tokens start with only "
                                 f"{len(np.unique(token_map))} of the teacher's {units} units")
            self._token_map = token_map

    def teacher_model_io(self, info: data.DatasetInfo) -> tuple[int, tuple[int, ...]]:
        """(vocabulary, input shape) of the teacher: its own tokenizer's and window's."""
        self.bind(info)
        return info.metadata["teacher_vocab_size"], (info.metadata["teacher_seq_len"],)

    def abstract_batch(self, info: data.DatasetInfo, batch_size: int) -> dict:
        length = info.metadata["teacher_seq_len"]
        teacher = {k: jax.ShapeDtypeStruct((batch_size, length), jnp.dtype(v))
                   for k, v in xtok_packing.TEACHER_FIELDS.items()}
        return {**super().abstract_batch(info, batch_size), **teacher,
                "align": jax.ShapeDtypeStruct((batch_size, info.seq_len), jnp.int32)}

    def teacher_inputs(self, batch: Mapping) -> ModelInputs:
        """What the teacher is called on: its own tokens of the window."""
        return ModelInputs(batch["teacher_inputs"],
                           {"segment_ids": batch["teacher_segment_ids"],
                            "positions": batch["teacher_positions"]})

    def align_teacher(self, outputs, batch: Mapping):
        """(teacher logits [B, Lt, Vt], features) -> (its logits at each student
        position's aligned teacher position [B, L, Vt], {aligned, token_map})."""
        logits, _ = outputs
        align = batch["align"]
        gathered = jnp.take_along_axis(logits, jnp.maximum(align, 0)[..., None], axis=1)
        return gathered, {ALIGNED: (align >= 0).astype(jnp.float32),
                          TOKEN_MAP: jnp.asarray(self._token_map)}

    def train_metrics(self, has_teacher: bool) -> dict:
        metrics = {"accuracy": lambda v: top1_correct(v.student_logits, v.labels)}
        if has_teacher:
            metrics["agreement"] = lambda v: v.teacher_features[ALIGNED] * self._agree(
                v.student_logits, v.teacher_logits)
        return metrics

    def _agree(self, student_logits, aligned_teacher_logits) -> jax.Array:
        """1.0 where the student's merged top-1 teacher unit is the teacher's top-1."""
        merged = merged_log_probs(student_logits, jnp.asarray(self._token_map),
                                  aligned_teacher_logits.shape[-1])
        return (jnp.argmax(merged, -1) == jnp.argmax(aligned_teacher_logits, -1)).astype(
            jnp.float32)

    def eval_sums(self, student_logits, teacher_logits, batch: Mapping) -> dict:
        """The student's sums (`CausalLM.eval_sums`); with the teacher's logits [B, Lt, Vt]
        its NLL and correct bytes over its weighted targets, their count, and at aligned
        positions the agreement and KL (module doc)."""
        sums = super().eval_sums(student_logits, None, batch)
        if teacher_logits is None:
            return sums
        mask = batch["mask"][:, None]
        tw = batch["teacher_weights"] * mask
        ty = batch["teacher_targets"]
        aligned, _ = self.align_teacher((teacher_logits, None), batch)
        aw = batch["weights"] * mask * (batch["align"] >= 0)
        kl = merged_kl(student_logits, aligned, jnp.asarray(self._token_map))
        sums.update(teacher_nll=jnp.sum(tw * cross_entropy(teacher_logits, ty)),
                    teacher_correct=jnp.sum(tw * top1_correct(teacher_logits, ty)),
                    teacher_count=jnp.sum(tw), aligned=jnp.sum(aw),
                    agree=jnp.sum(aw * self._agree(student_logits, aligned)),
                    kl=jnp.sum(aw * kl))
        return sums

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Per student token (teacher NLL included), per byte and per aligned position."""
        result = super().finalize({k: sums[k] for k in ("count", "nll", "correct")})
        if "agree" in sums:
            count = max(float(sums["count"]), 1.0)
            t_count = max(float(sums["teacher_count"]), 1.0)
            aligned = max(float(sums["aligned"]), 1.0)
            result["teacher_nll"] = float(sums["teacher_nll"]) / count
            result["teacher_perplexity"] = math.exp(result["teacher_nll"])
            result["teacher_bits_per_byte"] = float(sums["teacher_nll"]) / t_count / math.log(2)
            result["teacher_accuracy"] = float(sums["teacher_correct"]) / t_count
            result["agreement"] = float(sums["agree"]) / aligned
            result["kl"] = float(sums["kl"]) / aligned
        return result


def teacher_stage_config(config):
    """The byte-level teacher's own supervised run (edits `config`, a copy, in place):
    task `causal_lm` on the same corpus, documents and split, tokenised by the byte
    tokenizer (written once into the data dir), in windows of the teacher's length."""
    data_dir = os.path.expanduser(config.data.data_dir or data.default_data_dir())
    config.task = "causal_lm"
    config.data.tokenizer = xtok_builders.write_byte_tokenizer(
        os.path.join(data_dir, "byte_tokenizer.json"))
    config.data.vocab_size = xtok_builders.BYTE_VOCAB_SIZE
    config.data.seq_len = int(config.data.teacher_seq_len) or 4 * int(config.data.seq_len)
    return config


def check_vocabularies(config) -> None:
    """In task cross_tokenizer, refuses in one line naming both sizes a teacher whose
    vocabulary (the byte tokenizer's) differs from the student's when no term of
    `config.objective` compares different vocabularies (reads nothing). Task causal_lm
    refuses any teacher vocabulary other than the dataset's (`validate.check_config`)."""
    if not config.teacher.model or config.task != CrossTokenizer.name:
        return
    teacher = xtok_builders.BYTE_VOCAB_SIZE
    student = int(config.student.num_classes) or int(config.data.vocab_size)
    if config.teacher.num_classes:
        raise ValueError(f"config.teacher.num_classes: the teacher reads the byte tokenizer's "
                         f"{teacher} tokens in task 'cross_tokenizer'; set it to 0")
    losses = {raw.get("loss", name) if hasattr(raw, "get") else name
              for name, raw in config.objective.items()}
    if teacher != student and not losses & XTOK_TERMS:
        raise ValueError(f"config.objective: the teacher's vocabulary ({teacher} tokens) differs "
                         f"from the student's ({student} tokens) and no term compares different "
                         f"vocabularies; add one of {sorted(XTOK_TERMS)}, e.g. "
                         "xtok_kl=dict(weight=0.5)")
