"""What a student inherits from its teacher: per-class accuracy, repeated errors, calibration.

`class_sums` / `calibration_sums` are the eval batch's sums (added up over the split);
`per_class`, `expected_calibration_error` turn them into metrics; `report` reads a merged
demo summary (teacher, scratch student, distilled student) and names the classes whose gap
to the teacher grew most and how many of the teacher's errors each student repeats.
For language models the "class" of a position is its target token's frequency bucket
(`TOKEN_BUCKETS`, the rule in `token_bias`) and `bucket_report` reads the same per bucket.

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
# target-token frequency buckets of an LM, most frequent first (`token_bias.frequency_buckets`)
TOKEN_BUCKETS = ("frequent", "common", "uncommon", "rare")


def class_sums(logits, labels, mask, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(examples per class, correct top-1 predictions per class), both [num_classes]."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(onehot, 0), jnp.sum(onehot * correct[:, None], 0)


def calibration_sums(logits, labels, mask, bins: int = ECE_BINS) -> jax.Array:
    """[bins, 3]: per confidence bin, (examples, sum of confidences, correct predictions).
    Bin b holds confidences in (b/bins, (b+1)/bins]; bin 0 also holds 0."""
    confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), -1), -1)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return binned_calibration(confidence, correct, mask, bins)


def binned_calibration(confidence, correct, mask, bins: int = ECE_BINS) -> jax.Array:
    """`calibration_sums` from each example's confidence and correctness (1.0 / 0.0)."""
    index = jnp.clip(jnp.ceil(confidence * bins).astype(jnp.int32) - 1, 0, bins - 1)
    onehot = jax.nn.one_hot(index, bins, dtype=jnp.float32) * mask[:, None]
    return jnp.stack([jnp.sum(onehot, 0), onehot.T @ confidence, onehot.T @ correct], -1)


def repeated_error_sums(student_logits, teacher_logits, labels, mask) -> tuple[jax.Array, jax.Array]:
    """(teacher errors, those where the student predicts the teacher's same wrong class)."""
    return repeated_errors(jnp.argmax(student_logits, -1), jnp.argmax(teacher_logits, -1),
                           labels, mask)


def repeated_errors(s_pred, t_pred, labels, mask) -> tuple[jax.Array, jax.Array]:
    """`repeated_error_sums` from the two models' top-1 predictions."""
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


def bucket_report(summary: Mapping) -> dict:
    """The bias report of an LM demo summary by target-token frequency bucket: per bucket
    its vocabulary ids, share of training and eval tokens, the accuracy, NLL and ECE of
    teacher, scratch and distilled student, the distilled student's accuracy gap to the
    teacher (and its growth over the scratch student's), and the share of the teacher's
    errors there that each student repeats; the bucket whose gap grew most (without a
    scratch student: the largest gap); and, over the whole split, each model's ECE and
    the share of the teacher's errors each student repeats."""
    scratch = "scratch_bucket_accuracy" in summary
    models = ("teacher", "scratch", "student") if scratch else ("teacher", "student")
    repeats = {"student": summary["bucket_error_repeat"],
               **({"scratch": summary["scratch_bucket_error_repeat"]}
                  if "scratch_bucket_error_repeat" in summary else {})}
    tokens = np.asarray(summary["student_bucket_tokens"], np.float64)
    rows = []
    for k, name in enumerate(TOKEN_BUCKETS):
        acc = {m: summary[f"{m}_bucket_accuracy"][k] for m in models}
        row = {"bucket": name, "vocab_ids": summary["student_bucket_vocab_ids"][k],
               "train_share": summary["student_bucket_train_share"][k],
               "eval_share": float(tokens[k] / max(tokens.sum(), 1.0)), "accuracy": acc,
               "gap": acc["teacher"] - acc["student"]}
        if scratch:
            row["scratch_gap"] = acc["teacher"] - acc["scratch"]
            row["gap_growth"] = row["gap"] - row["scratch_gap"]
        row.update({metric: {m: summary[f"{m}_bucket_{metric}"][k] for m in models}
                    for metric in ("nll", "ece")})
        row["teacher_error_repeat_share"] = {m: v[k] for m, v in repeats.items()}
        rows.append(row)
    key = "gap_growth" if scratch else "gap"
    worst = max(rows, key=lambda r: r[key])["bucket"]  # ties: the more frequent
    overall = {"student": summary["error_repeat"],
               **({"scratch": summary["scratch_error_repeat"]}
                  if "scratch_error_repeat" in summary else {})}
    return {"token_buckets": rows,
            "bucket_gap_grew_most" if scratch else "bucket_largest_gap": worst,
            "teacher_error_repeat_share": overall,
            "ece": {m: summary[f"{m}_ece"] for m in models}}


def rare_tokens_line(report: Mapping) -> str:
    """One line of a `bucket_report`: the rare bucket's accuracies and repeated errors."""
    r = report["token_buckets"][-1]
    acc, rep = r["accuracy"], r["teacher_error_repeat_share"]
    names = {"teacher": "teacher", "scratch": "scratch", "student": "distilled"}
    line = (f"{r['bucket']} tokens ({r['vocab_ids']:,} ids, {r['train_share']:.0%} of training "
            f"tokens): token acc " + ", ".join(f"{names[m]} {a:.4f}" for m, a in acc.items())
            + f"; the distilled student repeats {rep['student']:.1%} of the teacher's errors")
    return line + (f" (scratch {rep['scratch']:.1%})" if "scratch" in rep else "")


def attach(summary: dict) -> dict:
    """`summary` with its `bias` report, where it holds a teacher's and a student's
    per-class accuracy (classification with a teacher) or per-bucket accuracy (LM)."""
    if "teacher_per_class_accuracy" in summary and "student_per_class_accuracy" in summary:
        summary["bias"] = report(summary)
    elif "teacher_bucket_accuracy" in summary and "student_bucket_accuracy" in summary:
        summary["bias"] = bucket_report(summary)
    return summary


def scalars(metrics: Mapping) -> dict[str, float]:
    """The scalar entries of an eval result (what progress lines and TensorBoard show)."""
    return {k: v for k, v in metrics.items() if np.ndim(v) == 0}
