"""The bias report's pieces against hand-derived values (the demo's summary is checked
against a NumPy forward pass in test_train.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import bias


def _logits(probs):
    return jnp.log(jnp.asarray(probs, jnp.float32))


def test_ece_by_hand():
    """Confidences 0.9 (right), 0.9 (wrong), 0.7 (right), and a masked-out example:
    bins 13 (2 examples, accuracy 1/2, confidence 0.9) and 10 (1, 1, 0.7), so
    ECE = (2/3)|0.5 - 0.9| + (1/3)|1 - 0.7| = 0.36667."""
    logits = _logits([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    labels, mask = jnp.array([0, 1, 1, 0]), jnp.array([1.0, 1.0, 1.0, 0.0])
    sums = np.asarray(bias.calibration_sums(logits, labels, mask))
    assert sums.shape == (bias.ECE_BINS, 3)
    np.testing.assert_allclose(sums[13], [2, 1.8, 1], rtol=1e-6)
    np.testing.assert_allclose(sums[10], [1, 0.7, 1], rtol=1e-6)
    assert sums[:, 0].sum() == 3
    assert bias.expected_calibration_error(sums) == pytest.approx(0.4 * 2 / 3 + 0.3 / 3, rel=1e-6)


def test_class_sums_and_repeated_errors_by_hand():
    """Labels 0, 0, 1, 2; the teacher predicts 0, 1, 1, 1 (errors on examples 1 and 3),
    the student 0, 1, 2, 0: it repeats the teacher's wrong class on example 1 only."""
    eye = np.eye(3) * 5.0
    teacher = jnp.asarray(eye[[0, 1, 1, 1]])
    student = jnp.asarray(eye[[0, 1, 2, 0]])
    labels, mask = jnp.array([0, 0, 1, 2]), jnp.ones(4)
    count, correct = bias.class_sums(student, labels, mask, 3)
    np.testing.assert_array_equal(count, [2, 1, 1])
    np.testing.assert_array_equal(correct, [1, 0, 0])
    assert bias.per_class(count, correct) == [0.5, 0.0, 0.0]
    wrong, repeated = bias.repeated_error_sums(student, teacher, labels, mask)
    assert (float(wrong), float(repeated)) == (2.0, 1.0)


def test_report_without_a_scratch_student_ranks_the_largest_gaps():
    summary = {"teacher_per_class_accuracy": [0.9, 0.8, 1.0],
               "student_per_class_accuracy": [0.9, 0.5, 0.8],
               "error_repeat": 0.25, "teacher_ece": 0.01, "student_ece": 0.05}
    report = bias.report(summary, top=2)
    assert report["classes_largest_gap"] == [1, 2]  # gaps 0, 0.3, 0.2
    assert [r["gap"] for r in report["per_class"]] == pytest.approx([0.0, 0.3, 0.2])
    assert report["teacher_error_repeat_share"] == {"student": 0.25}
    assert report["ece"] == {"teacher": 0.01, "student": 0.05}
