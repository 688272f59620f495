"""Image classification: images and labels in, class logits out, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxdistill import augment, bias, data
from jaxdistill.tasks.base import ModelInputs, top1_agreement, top1_correct, train_metrics


class Classification:
    """Batches `image` float32 [B, H, W, C] in [0, 1], `label` int32 [B], `index` int32 [B]
    (+ `mask` [B] in eval). The models see the augmented (train) and normalised images,
    the same for teacher and student; every example weighs 1."""

    name = "classification"
    input_kind = "image"
    model_kind = "image"
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
        """Over the real (mask = 1) examples: correct predictions (overall and per class)
        and confidence-bin sums of student and teacher, their top-1 agreement, the
        teacher's errors and how many of them the student repeats, the example count."""
        mask, labels = batch["mask"], batch["label"]
        classes = student_logits.shape[-1]
        sums = {"count": jnp.sum(mask),
                "correct": jnp.sum(mask * top1_correct(student_logits, labels))}
        sums["class_count"], sums["class_correct"] = bias.class_sums(
            student_logits, labels, mask, classes)
        sums["calibration"] = bias.calibration_sums(student_logits, labels, mask)
        if teacher_logits is not None:
            sums["teacher_correct"] = jnp.sum(mask * top1_correct(teacher_logits, labels))
            sums["agree"] = jnp.sum(mask * top1_agreement(student_logits, teacher_logits))
            _, sums["teacher_class_correct"] = bias.class_sums(teacher_logits, labels, mask,
                                                               classes)
            sums["teacher_calibration"] = bias.calibration_sums(teacher_logits, labels, mask)
            sums["teacher_wrong"], sums["repeated"] = bias.repeated_error_sums(
                student_logits, teacher_logits, labels, mask)
        return sums

    def finalize(self, sums: Mapping[str, float]) -> dict:
        """Student top-1 accuracy, per-class accuracy and ECE; with a teacher, its own, the
        agreement and the share of the teacher's errors that the student repeats."""
        count = float(sums["count"])
        result = {"accuracy": float(sums["correct"]) / count,
                  "per_class_accuracy": bias.per_class(sums["class_count"], sums["class_correct"]),
                  "ece": bias.expected_calibration_error(sums["calibration"])}
        if "agree" in sums:
            result["teacher_accuracy"] = float(sums["teacher_correct"]) / count
            result["agreement"] = float(sums["agree"]) / count
            result["teacher_per_class_accuracy"] = bias.per_class(sums["class_count"],
                                                                  sums["teacher_class_correct"])
            result["teacher_ece"] = bias.expected_calibration_error(sums["teacher_calibration"])
            result["error_repeat"] = float(sums["repeated"]) / max(float(sums["teacher_wrong"]), 1.0)
        return result

    def items_per_step(self, batch_size: int, info) -> int:
        return batch_size
