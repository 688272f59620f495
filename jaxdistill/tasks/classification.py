"""Image classification: images and labels in, class logits out, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxdistill import augment, data
from jaxdistill.tasks.base import ModelInputs, top1_agreement, top1_correct, train_metrics


class Classification:
    """Batches `image` float32 [B, H, W, C] in [0, 1], `label` int32 [B], `index` int32 [B]
    (+ `mask` [B] in eval). The models see the augmented (train) and normalised images,
    the same for teacher and student; every example weighs 1."""

    name = "classification"
    input_kind = "image"
    input_dtype = jnp.float32
    unit = "examples"
    best_metric = "accuracy"
    best_mode = "max"
    terms = None  # every term of the library

    def __init__(self, config):
        self.augment = augment.Augment(config.data.augment, int(config.data.augment_pixels),
                                       tuple(config.data.mean), tuple(config.data.std))

    def prepare_data(self, data_cfg) -> data.DatasetInfo:
        return data.prepare(data_cfg.name, data_cfg.data_dir or None)

    def model_io(self, info: data.DatasetInfo) -> tuple[int, tuple[int, ...]]:
        return info.num_classes, tuple(info.image_shape)

    def abstract_batch(self, info: data.DatasetInfo, batch_size: int) -> dict:
        return {"image": jax.ShapeDtypeStruct((batch_size, *info.image_shape), jnp.float32),
                "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def inputs(self, batch: Mapping, rng, *, train: bool) -> ModelInputs:
        return ModelInputs(augment.apply(self.augment, batch["image"], rng, train=train), {})

    def targets(self, batch: Mapping) -> jax.Array:
        return batch["label"]

    def weights(self, batch: Mapping) -> jax.Array:
        return jnp.ones(batch["label"].shape, jnp.float32)

    def train_metrics(self, has_teacher: bool) -> dict:
        return train_metrics(has_teacher)

    def eval_sums(self, student_logits, teacher_logits, batch: Mapping) -> dict:
        """Correct predictions of student and teacher, their top-1 agreement and the
        example count, over the real (mask = 1) examples."""
        mask, labels = batch["mask"], batch["label"]
        sums = {"count": jnp.sum(mask),
                "correct": jnp.sum(mask * top1_correct(student_logits, labels))}
        if teacher_logits is not None:
            sums["teacher_correct"] = jnp.sum(mask * top1_correct(teacher_logits, labels))
            sums["agree"] = jnp.sum(mask * top1_agreement(student_logits, teacher_logits))
        return sums

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Student top-1 accuracy; with a teacher, its accuracy and the agreement."""
        count = float(sums["count"])
        result = {"accuracy": float(sums["correct"]) / count}
        if "agree" in sums:
            result["teacher_accuracy"] = float(sums["teacher_correct"]) / count
            result["agreement"] = float(sums["agree"]) / count
        return result

    def items_per_step(self, batch_size: int, info) -> int:
        return batch_size
