"""Causal language modelling: next-token prediction on packed token windows.

A batch holds `inputs`, `targets` (the next token of each input), `segment_ids` (the
packed document of each position, 0 = padding), `positions` (within its document) and
`weights` (1 where the target is a real next token of the same document, and in the
completion of a prompt/completion pair), all [B, L], plus `index` [B] (and `mask` [B] in
eval). Every term is reduced per token with `weights`, so padding and document boundaries
never count; eval reports token NLL, perplexity, next-token accuracy, top-1 agreement and
the mean per-token KL(teacher || student), and per frequency bucket of the target token
(`token_bias`, counted on the training split) the accuracy, NLL, ECE and repeated teacher
errors of the bias report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxdistill import data, token_bias
from jaxdistill.losses import cross_entropy, forward_kl
from jaxdistill.tasks.base import ModelInputs, top1_agreement, top1_correct, train_metrics

TOKEN_FIELDS = ("inputs", "targets", "segment_ids", "positions")


class CausalLM:
    """Decoder teacher and student on one tokenizer's token windows (see module doc)."""

    name = "causal_lm"
    input_kind = "tokens"
    model_kind = "decoder"
    input_dtype = jnp.int32
    unit = "tokens"
    best_metric = "perplexity"
    best_mode = "min"
    # per-position logit terms, per-token hidden-state hints, attention-map transfer
    terms = frozenset({"ce", "kd", "fkl", "rkl", "jsd", "tvd", "skl", "srkl", "hint", "at"})

    def __init__(self, config):
        if config.data.augment != "none":
            raise ValueError(f"config.data.augment: '{config.data.augment}' augments images; "
                             "task 'causal_lm' reads tokens, so set it to 'none'")
        room = int(config.data.seq_len) - len(str(config.lm.sample_prompt).encode())
        if not 0 <= int(config.lm.sample_tokens) <= room:  # byte-level BPE: tokens <= bytes
            raise ValueError(f"config.lm.sample_tokens ({config.lm.sample_tokens}) must be in "
                             f"[0, {max(room, 0)}]: the prompt and the sample must fit in "
                             f"config.data.seq_len ({config.data.seq_len})")
        self.token_buckets = None  # token_bias.TokenBuckets, once prepare_data has counted

    def prepare_data(self, data_cfg) -> data.DatasetInfo:
        info = data.prepare_from_config(data_cfg)
        if info.kind != "tokens":
            raise ValueError(f"config.data.name: '{data_cfg.name}' is an image dataset; task "
                             "'causal_lm' needs a token dataset (pystdlib, pydoc_topics, ...)")
        if data_cfg.train_split in info.splits:  # else validate.check_data names the field
            self.token_buckets = token_bias.for_dataset(info, data_cfg.train_split)
        return info

    def model_io(self, info: data.DatasetInfo) -> tuple[int, tuple[int, ...]]:
        return info.num_classes, (info.seq_len,)

    def abstract_batch(self, info: data.DatasetInfo, batch_size: int) -> dict:
        tokens = jax.ShapeDtypeStruct((batch_size, info.seq_len), jnp.int32)
        return {**{k: tokens for k in TOKEN_FIELDS},
                "weights": jax.ShapeDtypeStruct((batch_size, info.seq_len), jnp.float32),
                "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def inputs(self, batch: Mapping, rng, *, train: bool) -> ModelInputs:
        return ModelInputs(batch["inputs"], {"segment_ids": batch["segment_ids"],
                                             "positions": batch["positions"]})

    def targets(self, batch: Mapping) -> jax.Array:
        return batch["targets"]

    def weights(self, batch: Mapping) -> jax.Array:
        return batch["weights"]

    def train_metrics(self, has_teacher: bool) -> dict:
        return train_metrics(has_teacher)

    def eval_sums(self, student_logits, teacher_logits, batch: Mapping) -> dict:
        """Weighted sums over the batch's target tokens: the student's NLL and correct
        next tokens; with a teacher, its NLL and correct tokens, the top-1 agreement and
        KL(teacher || student); the token count; and their sums per token bucket."""
        w = batch["weights"] * batch["mask"][:, None]
        y = batch["targets"]
        sums = {"count": jnp.sum(w), "nll": jnp.sum(w * cross_entropy(student_logits, y)),
                "correct": jnp.sum(w * top1_correct(student_logits, y))}
        if teacher_logits is not None:
            sums.update(
                teacher_nll=jnp.sum(w * cross_entropy(teacher_logits, y)),
                teacher_correct=jnp.sum(w * top1_correct(teacher_logits, y)),
                agree=jnp.sum(w * top1_agreement(student_logits, teacher_logits)),
                kl=jnp.sum(w * forward_kl(student_logits, teacher_logits)))
        if self.token_buckets is not None:
            sums.update(token_bias.bucket_sums(student_logits, teacher_logits, y, w,
                                               self.token_buckets.table))
        return sums

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Per-token means; perplexity = exp(mean NLL); the per-bucket lists of
        `token_bias.bucket_metrics`."""
        count = max(float(sums["count"]), 1.0)
        result = {"nll": float(sums["nll"]) / count, "accuracy": float(sums["correct"]) / count}
        result["perplexity"] = math.exp(result["nll"])
        if "agree" in sums:
            result["teacher_nll"] = float(sums["teacher_nll"]) / count
            result["teacher_perplexity"] = math.exp(result["teacher_nll"])
            result["teacher_accuracy"] = float(sums["teacher_correct"]) / count
            result["agreement"] = float(sums["agree"]) / count
            result["kl"] = float(sums["kl"]) / count
        if "bucket_count" in sums:
            result.update(token_bias.bucket_metrics(sums, self.token_buckets))
        return result

    def items_per_step(self, batch_size: int, info) -> int:
        return batch_size * info.seq_len
