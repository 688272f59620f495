"""What a student inherits from its teacher: per-class accuracy, repeated errors, calibration.

`class_sums` / `calibration_sums` are the eval batch's sums (added up over the split);
`per_class`, `expected_calibration_error` turn them into metrics; `report` reads a merged
demo summary (teacher, scratch student, distilled student) and names the classes whose gap
to the teacher grew most and how many of the teacher's errors each student repeats.

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
confidences (max softmax probability) in `ECE_BINS` equal-width bins over [0, 1],
ECE = sum_b (n_b / N) |accuracy_b - confidence_b|.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

ECE_BINS = 15


def class_sums(logits, labels, mask, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(examples per class, correct top-1 predictions per class), both [num_classes]."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(onehot, 0), jnp.sum(onehot * correct[:, None], 0)


def calibration_sums(logits, labels, mask, bins: int = ECE_BINS) -> jax.Array:
    """[bins, 3]: per confidence bin, (examples, sum of confidences, correct predictions).
    Bin b holds confidences in (b/bins, (b+1)/bins]; bin 0 also holds 0."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    confidence = jnp.max(probs, -1)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    index = jnp.clip(jnp.ceil(confidence * bins).astype(jnp.int32) - 1, 0, bins - 1)
    onehot = jax.nn.one_hot(index, bins, dtype=jnp.float32) * mask[:, None]
    return jnp.stack([jnp.sum(onehot, 0), onehot.T @ confidence, onehot.T @ correct], -1)


def repeated_error_sums(student_logits, teacher_logits, labels, mask) -> tuple[jax.Array, jax.Array]:
    """(teacher errors, those where the student predicts the teacher's same wrong class)."""
    t_pred, s_pred = jnp.argmax(teacher_logits, -1), jnp.argmax(student_logits, -1)
    wrong = mask * (t_pred != labels)
    return jnp.sum(wrong), jnp.sum(wrong * (s_pred == t_pred))


def expected_calibration_error(bins) -> float:
    """ECE from `calibration_sums` added up over a split."""
    bins = np.asarray(bins, np.float64)
    count, conf, correct = bins[:, 0], bins[:, 1], bins[:, 2]
    return float(np.sum(np.abs(correct - conf)) / max(count.sum(), 1.0))


def per_class(count, correct) -> list[float]:
    """Top-1 accuracy per class (0 for a class with no eval examples)."""
    count, correct = np.asarray(count, np.float64), np.asarray(correct, np.float64)
    return [float(c / n) if n else 0.0 for c, n in zip(correct, count)]


def report(summary: Mapping, top: int = 3) -> dict:
    """The bias report of a demo summary that holds `teacher_`, `student_` and (with the
    scratch baseline) `scratch_` per-class accuracy, ECE and repeated-error shares:
    per class the three accuracies and the distilled student's gap to the teacher; the
    `top` classes whose gap grew most from the scratch student's to the distilled one's
    (or, without a scratch student, the largest gaps); the share of the teacher's errors
    each student repeats; the ECE of each."""
    teacher = summary["teacher_per_class_accuracy"]
    student = summary["student_per_class_accuracy"]
    scratch = summary.get("scratch_per_class_accuracy")
    gap = [t - s for t, s in zip(teacher, student)]
    rows = [{"class": c, "teacher": teacher[c], "student": student[c], "gap": gap[c],
             **({"scratch": scratch[c], "scratch_gap": teacher[c] - scratch[c],
                 "gap_growth": gap[c] - (teacher[c] - scratch[c])} if scratch else {})}
            for c in range(len(teacher))]
    key = "gap_growth" if scratch else "gap"
    worst = sorted(rows, key=lambda r: (-r[key], r["class"]))[:top]
    out = {"per_class": rows, "classes_gap_grew_most" if scratch else "classes_largest_gap":
           [r["class"] for r in worst],
           "teacher_error_repeat_share": {"student": summary.get("error_repeat")},
           "ece": {"teacher": summary.get("teacher_ece"), "student": summary.get("student_ece")}}
    if scratch:
        out["teacher_error_repeat_share"]["scratch"] = summary.get("scratch_error_repeat")
        out["ece"]["scratch"] = summary.get("scratch_ece")
    return out


def attach(summary: dict) -> dict:
    """`summary` with its `bias` report, where it holds a teacher's and a student's
    per-class accuracy (classification with a teacher)."""
    if "teacher_per_class_accuracy" in summary and "student_per_class_accuracy" in summary:
        summary["bias"] = report(summary)
    return summary


def scalars(metrics: Mapping) -> dict[str, float]:
    """The scalar entries of an eval result (what progress lines and TensorBoard show)."""
    return {k: v for k, v in metrics.items() if np.ndim(v) == 0}
