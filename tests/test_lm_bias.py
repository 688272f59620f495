"""The LM bias report by token-frequency bucket (issue 12 §3): the bucket rule by hand, the
per-bucket eval sums and metrics against float64 NumPy on random logits with padding, and the
LM demo's summary.json against a NumPy recomputation from its saved models' logits."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, set_fields

from jaxdistill import bias, checkpoint, experiment, token_bias
from jaxdistill.data.source import tfds_builder
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import forward

K = token_bias.NUM_BUCKETS


@pytest.mark.parametrize("counts, table, vocab_ids, share", [
    # ranked 0 (40), 1 (30), 2 (20), 3 (10), then unseen 4: tokens before each 0, 40, 70, 90
    # of 100 -> floor(4 * before / 100) = 0, 1, 2, 3; unseen -> rare
    ([40, 30, 20, 10, 0], [0, 1, 2, 3, 3], [1, 1, 1, 2], [0.4, 0.3, 0.2, 0.1]),
    # a tie (ids 0 and 2, 20 each) ranks the lower id first: before 1 (40): 0, 0 (20): 40,
    # 2: 60, 3: 80, 4: 90 -> buckets 0, 1, 2, 3, 3
    ([20, 40, 20, 10, 10, 0], [1, 0, 2, 3, 3, 3], [1, 1, 1, 3], [0.4, 0.2, 0.2, 0.2]),
    # id 7 holds half the tokens: bucket 0 alone, the next id starts at 100 of 200 -> 2, so
    # bucket 1 is empty; 3 (before 150), 2, 4, 5 and the unseen 0, 6 are rare
    ([0, 50, 10, 30, 5, 5, 0, 100], [3, 2, 3, 3, 3, 3, 3, 0], [1, 0, 1, 6],
     [0.5, 0.0, 0.25, 0.25]),
])
def test_frequency_bucket_rule_by_hand(counts, table, vocab_ids, share):
    np.testing.assert_array_equal(token_bias.frequency_buckets(counts), table)
    buckets = token_bias.from_counts(counts)
    assert buckets.table.dtype == np.int32
    assert buckets.vocab_ids == tuple(vocab_ids)
    assert buckets.train_share == pytest.approx(share)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_ece(right, conf, bins, keep):
    """sum over bins of |correct - sum of confidences| among the `keep` positions, over them."""
    return sum(abs(right[keep & (bins == b)].sum() - conf[keep & (bins == b)].sum())
               for b in range(15)) / max(keep.sum(), 1)


def _np_bucket_metrics(s_logits, t_logits, targets, weights, table):
    """float64 NumPy per-bucket metrics over positions of weight 1 (lists [K]): eval tokens,
    accuracy, mean NLL, ECE (15 equal-width confidence bins, Guo et al. 2017) of each model
    and the share of the teacher's errors the student repeats with the same wrong token;
    the ECEs and the repeated share over all those positions."""
    keep = weights.reshape(-1) > 0
    y = targets.reshape(-1)[keep]
    group = np.asarray(table)[y]
    out = {"tokens": [int(np.sum(group == k)) for k in range(K)]}
    preds = {}
    for name, logits in (("student", s_logits), ("teacher", t_logits)):
        p = _softmax(np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])[keep])
        pred, conf = p.argmax(-1), p.max(-1)
        right = pred == y
        nll = -np.log(p[np.arange(len(y)), y])
        bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
        acc, mean_nll = [], []
        for k in range(K):
            g = group == k
            acc.append(right[g].sum() / max(g.sum(), 1))
            mean_nll.append(nll[g].sum() / max(g.sum(), 1))
        out[name] = {"accuracy": acc, "nll": mean_nll,
                     "ece": [_np_ece(right, conf, bins, group == k) for k in range(K)],
                     "split_ece": _np_ece(right, conf, bins, group >= 0)}
        preds[name] = pred
    wrong = preds["teacher"] != y
    out["wrong"] = [int(np.sum(wrong & (group == k))) for k in range(K)]
    same = preds["student"] == preds["teacher"]
    out["repeat"] = [np.sum(wrong & (group == k) & same) / max(out["wrong"][k], 1)
                     for k in range(K)]
    out["split_repeat"] = np.sum(wrong & same) / wrong.sum()
    return out


def _assert_close(values, ref, slack):
    """|values - ref| <= slack + 1e-6 elementwise (`slack`: what one flipped argmax moves)."""
    assert np.all(np.abs(np.subtract(values, ref)) <= np.asarray(slack) + 1e-6), (values, ref)


def _assert_metrics_match(metrics, ref, prefix, name, slack=0.0):
    _assert_close(metrics[f"{prefix}bucket_accuracy"], ref[name]["accuracy"], slack)
    np.testing.assert_allclose(metrics[f"{prefix}bucket_nll"], ref[name]["nll"], rtol=1e-5)
    _assert_close(metrics[f"{prefix}bucket_ece"], ref[name]["ece"], slack)
    _assert_close(metrics[f"{prefix}ece"], ref[name]["split_ece"], np.max(slack))


def test_bucket_sums_and_metrics_match_numpy_with_padding_excluded():
    """Random logits [3, 7, 13], a student near the teacher (so it repeats some of the
    teacher's errors), weights with a padded row and padded tail positions, random buckets."""
    rng = np.random.default_rng(0)
    shape, vocab = (3, 7), 13
    teacher = 3.0 * rng.normal(size=(*shape, vocab)).astype(np.float32)
    student = (teacher + 2.0 * rng.normal(size=teacher.shape)).astype(np.float32)
    targets = rng.integers(0, vocab, size=shape).astype(np.int32)
    weights = (rng.random(shape) < 0.8).astype(np.float32)
    weights[2] = 0.0          # a padding row
    weights[0, 5:] = 0.0      # padded tail of a window
    table = rng.integers(0, K, size=vocab).astype(np.int32)
    buckets = token_bias.TokenBuckets(table, (1, 2, 3, 7), (0.25, 0.25, 0.25, 0.25))
    sums = jax.jit(token_bias.bucket_sums)(student, teacher, targets, weights, table)
    assert {k: v.shape for k, v in sums.items()} == {
        "bucket_count": (K,), "bucket_correct": (K,), "bucket_nll": (K,),
        "bucket_calibration": (K, bias.ECE_BINS, 3), "teacher_bucket_correct": (K,),
        "teacher_bucket_nll": (K,), "teacher_bucket_calibration": (K, bias.ECE_BINS, 3),
        "bucket_teacher_wrong": (K,), "bucket_repeated": (K,)}
    metrics = token_bias.bucket_metrics(jax.device_get(sums), buckets)
    ref = _np_bucket_metrics(student, teacher, targets, weights, table)
    assert metrics["bucket_tokens"] == ref["tokens"]
    assert sum(ref["tokens"]) == int(weights.sum()) < weights.size
    assert metrics["bucket_vocab_ids"] == [1, 2, 3, 7]
    _assert_metrics_match(metrics, ref, "", "student")
    _assert_metrics_match(metrics, ref, "teacher_", "teacher")
    _assert_close(metrics["bucket_error_repeat"], ref["repeat"], 0.0)
    _assert_close(metrics["error_repeat"], ref["split_repeat"], 0.0)
    assert 0 < float(sums["bucket_repeated"].sum()) < float(sums["bucket_teacher_wrong"].sum())
    # without a teacher: the student's sums alone
    alone = token_bias.bucket_sums(student, None, targets, weights, table)
    assert set(alone) == {"bucket_count", "bucket_correct", "bucket_nll", "bucket_calibration"}
    np.testing.assert_array_equal(alone["bucket_count"], sums["bucket_count"])


def test_bucket_report_without_a_scratch_student_names_the_largest_gap():
    summary = {"student_bucket_tokens": [30, 30, 20, 20],
               "student_bucket_vocab_ids": [3, 9, 40, 460],
               "student_bucket_train_share": [0.26, 0.24, 0.25, 0.25],
               "teacher_bucket_accuracy": [0.9, 0.6, 0.4, 0.2],
               "student_bucket_accuracy": [0.9, 0.5, 0.35, 0.05],
               "teacher_bucket_nll": [0.5, 2.0, 3.0, 5.0],
               "student_bucket_nll": [0.6, 2.5, 3.5, 6.0],
               "teacher_bucket_ece": [0.01, 0.02, 0.03, 0.04],
               "student_bucket_ece": [0.02, 0.03, 0.04, 0.05],
               "bucket_error_repeat": [0.5, 0.4, 0.3, 0.25], "error_repeat": 0.4,
               "teacher_ece": 0.03, "student_ece": 0.04}
    report = bias.bucket_report(summary)
    assert report["bucket_largest_gap"] == "rare"  # gaps 0, 0.1, 0.05, 0.15
    rows = report["token_buckets"]
    assert [r["gap"] for r in rows] == pytest.approx([0.0, 0.1, 0.05, 0.15])
    assert [r["eval_share"] for r in rows] == pytest.approx([0.3, 0.3, 0.2, 0.2])
    assert rows[1]["nll"] == {"teacher": 2.0, "student": 2.5}
    assert rows[3]["teacher_error_repeat_share"] == {"student": 0.25}
    assert "scratch_gap" not in rows[0]
    assert report["teacher_error_repeat_share"] == {"student": 0.4}
    assert report["ece"] == {"teacher": 0.03, "student": 0.04}
    assert bias.rare_tokens_line(report) == (
        "rare tokens (460 ids, 25% of training tokens): token acc teacher 0.2000, distilled "
        "0.0500; the distilled student repeats 25.0% of the teacher's errors")


# ------------------------------------------------------------------ the LM demo end to end

# tests/test_lm_demo.py's tiny demo (the same programs: in one test session they compile
# once), with no samples and one eval and checkpoint per stage
TINY = {"data.name": "pydoc_topics", "data.max_documents": 40, "data.vocab_size": 512,
        "data.seq_len": 32, "teacher.model": "lm_tiny", "student.model": "lm_tiny",
        "student.kwargs": {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 64},
        "teacher.train.num_steps": 12, "num_steps": 8, "batch_size": 8, "eval_batch_size": 16,
        "log_every": 0, "eval_every": 0, "checkpoint_every": 0, "lm.chunk_size": 8,
        "lm.sample_tokens": 0}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lm_bias"))
    config = set_fields(load_config("lm_kd", "runlocal"), **TINY)
    return workdir, config, experiment.run(config, workdir)


def _eval_logits(setup, workdirs):
    """Each saved model's eval-mode logits over the whole eval split (real windows only)."""
    info = setup.info
    source = tfds_builder(info.tfds_name, info.data_dir).as_data_source("test")
    rows = source.__getitems__(list(range(len(source))))
    windows = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets", "segment_ids",
                                                           "positions", "weights")}
    s_abstract = {"params": setup.abstract_state.params["student"],
                  "batch_stats": setup.abstract_state.batch_stats}
    logits = {}
    for name, workdir in workdirs.items():
        graphdef, abstract = ((setup.ctx.teacher_def, setup.teacher_abstract)
                              if name == "teacher" else (setup.ctx.student_def, s_abstract))
        model = checkpoint.load_teacher(workdir, abstract)
        run = jax.jit(functools.partial(forward, graphdef, train=False))
        logits[name] = np.asarray(run(model["params"], model["batch_stats"],
                                      jnp.asarray(windows["inputs"]),
                                      segment_ids=jnp.asarray(windows["segment_ids"]),
                                      positions=jnp.asarray(windows["positions"]))[0])
    return windows, logits


def test_demo_summary_carries_the_bucket_report_recomputed_with_numpy(demo):
    """The buckets from a NumPy count of the training targets; per bucket the accuracy, NLL
    and ECE of teacher, scratch and distilled students and both students' repeated teacher
    errors from float64 NumPy over the saved models' logits; the report and table line."""
    workdir, config, summary = demo
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == summary
    setup = prepare_run(set_fields(config, **{"teacher.checkpoint":
                                              os.path.join(workdir, "teacher")}))
    info = setup.info
    source = tfds_builder(info.tfds_name, info.data_dir).as_data_source("train")
    rows = source.__getitems__(list(range(len(source))))
    targets = np.concatenate([r["targets"][r["weights"] > 0] for r in rows])
    counts = np.bincount(targets, minlength=info.num_classes)
    assert counts.sum() == info.metadata["target_tokens"]["train"]
    np.testing.assert_array_equal(token_bias.train_target_counts(info, "train"), counts)
    table = token_bias.frequency_buckets(counts)
    assert (counts == 0).any() and set(table[counts == 0]) == {K - 1}  # unseen ids are rare

    windows, logits = _eval_logits(setup, {"teacher": os.path.join(workdir, "teacher"),
                                           "scratch": os.path.join(workdir, "scratch"),
                                           "student": workdir})
    y, w = windows["targets"], windows["weights"]
    ref = {name: _np_bucket_metrics(logits[name], logits["teacher"], y, w, table)
           for name in ("student", "scratch")}
    count = int(w.sum())
    assert summary["student_bucket_tokens"] == ref["student"]["tokens"]
    assert sum(ref["student"]["tokens"]) == count
    assert summary["student_bucket_vocab_ids"] == list(np.bincount(table, minlength=K))
    # the trainer's logits came from 8 devices, these from one: a near-tie may flip an argmax
    slack = 1 / np.maximum(ref["student"]["tokens"], 1)
    for name in ("student", "scratch"):
        _assert_metrics_match(summary, ref[name], f"{name}_", "student", slack)
    _assert_metrics_match(summary, ref["student"], "teacher_", "teacher", slack)
    slack = 1 / np.maximum(ref["student"]["wrong"], 1)
    _assert_close(summary["bucket_error_repeat"], ref["student"]["repeat"], slack)
    _assert_close(summary["scratch_bucket_error_repeat"], ref["scratch"]["repeat"], slack)
    for name, key in (("student", "error_repeat"), ("scratch", "scratch_error_repeat")):
        _assert_close(summary[key], ref[name]["split_repeat"], np.max(slack))
    # the whole-split figures are the token-weighted means of the buckets'
    tokens = np.asarray(summary["student_bucket_tokens"])
    assert summary["student_accuracy"] == pytest.approx(
        np.dot(tokens, summary["student_bucket_accuracy"]) / count, abs=1e-6)

    report = summary["bias"]
    assert report == bias.bucket_report(summary)
    assert [r["bucket"] for r in report["token_buckets"]] == list(bias.TOKEN_BUCKETS)
    rare = report["token_buckets"][-1]
    assert rare["accuracy"] == {m: summary[f"{m}_bucket_accuracy"][-1]
                                for m in ("teacher", "scratch", "student")}
    assert rare["teacher_error_repeat_share"] == {
        "student": summary["bucket_error_repeat"][-1],
        "scratch": summary["scratch_bucket_error_repeat"][-1]}
    assert report["teacher_error_repeat_share"] == {"student": summary["error_repeat"],
                                                    "scratch": summary["scratch_error_repeat"]}
    assert report["ece"] == {m: summary[f"{m}_ece"] for m in ("teacher", "scratch", "student")}
    growth = [r["gap_growth"] for r in report["token_buckets"]]
    assert report["bucket_gap_grew_most"] == bias.TOKEN_BUCKETS[int(np.argmax(growth))]
    assert experiment.comparison_table(summary).splitlines()[-1] == bias.rare_tokens_line(report)
