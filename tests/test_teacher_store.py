"""The offline teacher store: writing (library and CLI), reading by index, the numerics of
dense logits from top-k entries against float64 NumPy, KD from a store against online KD, the
fingerprint and augmentation refusals, and the data layer's `extra_fields` hook on 8 devices."""

import copy
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, device_env, load_config, set_fields
from flax import nnx
from refusals import refusal, store_of_another_teacher

from jaxdistill import checkpoint, data, experiment, parallel
from jaxdistill.losses.logits import kd_loss
from jaxdistill.store import (
    TeacherStore,
    check_config,
    check_store,
    dense_teacher_logits,
    expected_fingerprint,
    teacher_outputs_from_batch,
    teacher_sha256,
)
from jaxdistill.store.writer import write_store
from jaxdistill.train import train_and_evaluate

C = 10  # digits classes
N = 1437  # digits train examples


def _set(config, **fields):
    """A copy of `config` with dotted fields set (new fields allowed)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        return set_fields(config, **fields)


@pytest.fixture(scope="module")
def kd_config(tmp_path_factory):
    """The tiny digits KD config, its teacher (an MLP 64-64-10) trained for it."""
    teacher_dir = str(tmp_path_factory.mktemp("teacher"))
    config = load_config("digits_kd", "tiny")
    train_and_evaluate(experiment.teacher_config(config), teacher_dir)
    return _set(config, **{"teacher.checkpoint": teacher_dir})


@pytest.fixture(scope="module")
def teacher(kd_config):
    """The restored teacher as plain NumPy arrays, and its fingerprint."""
    from jaxdistill.run_setup import prepare_run
    setup = prepare_run(kd_config)
    abstract = {k: setup.teacher_abstract[k] for k in ("params", "batch_stats")}
    variables = checkpoint.load_teacher(kd_config.teacher.checkpoint, abstract)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(variables["params"]))
    return params, teacher_sha256(variables)


@pytest.fixture(scope="module")
def train_images(kd_config):
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    info = data.prepare("digits")
    batches = data.make_eval_iterator(info, split="train", reader="grain", global_batch_size=120,
                                      sharding=parallel.batch_sharding(mesh))
    images, masks = zip(*[(np.asarray(b["image"]), np.asarray(b["mask"])) for b in batches])
    return np.concatenate(images)[np.concatenate(masks) > 0]


@pytest.fixture(scope="module")
def online(teacher, train_images):
    """Independent float64 NumPy forward pass of the teacher MLP: (logits, embedding)."""
    params, _ = teacher
    h = train_images.reshape(len(train_images), -1).astype(np.float64)  # mean 0, std 1
    for i in sorted(params["hidden"]):
        h = np.maximum(h @ params["hidden"][i]["kernel"] + params["hidden"][i]["bias"], 0)
    return h @ params["fc"]["kernel"] + params["fc"]["bias"], h


@pytest.fixture(scope="module")
def full_store(kd_config, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stores") / "full")
    write_store(kd_config, path, features=("embedding",))
    return TeacherStore(path)


@pytest.fixture(scope="module")
def top3_store(kd_config, tmp_path_factory):
    """A top-3 store written through the command line, on 8 devices."""
    path = str(tmp_path_factory.mktemp("stores") / "top3")
    env = device_env(8)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdistill.teacher_store", "--config=configs/digits_kd.py:tiny",
         f"--config.teacher.checkpoint={kd_config.teacher.checkpoint}", f"--store={path}",
         "--top_k=3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 1437 examples" in proc.stdout
    return TeacherStore(path)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _lse(z):
    m = z.max(-1)
    return m + np.log(np.exp(z - m[..., None]).sum(-1))


def test_stored_outputs_equal_an_online_forward_pass(full_store, top3_store, online, teacher):
    logits, embedding = online
    assert (full_store.top_k, full_store.num_classes, len(full_store)) == (C, C, N)
    assert top3_store.top_k == 3 and top3_store.features == {}
    assert full_store.features == {"embedding": (64,)}
    abstract = full_store.abstract_fields(8)
    assert {k: (v.shape, v.dtype) for k, v in abstract.items()} == {
        "teacher_topk_values": ((8, C), np.float32), "teacher_topk_indices": ((8, C), np.int32),
        "teacher_logsumexp": ((8,), np.float32), "teacher_tail_logsumexp": ((8,), np.float32),
        "teacher_feature_embedding": ((8, 64), np.float32)}
    assert full_store.fingerprint == top3_store.fingerprint  # same teacher, data, preprocessing
    assert full_store.source["teacher_params_sha256"] == teacher[1]
    out = full_store.lookup(np.arange(N))
    dense = np.zeros((N, C))
    np.put_along_axis(dense, out["teacher_topk_indices"], out["teacher_topk_values"], -1)
    np.testing.assert_allclose(dense, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["teacher_logsumexp"], _lse(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["teacher_feature_embedding"], embedding, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(out["teacher_topk_values"], axis=-1) <= 0)  # largest first
    top = top3_store.lookup(np.arange(N))
    order = np.argsort(-logits, axis=-1)
    np.testing.assert_array_equal(top["teacher_topk_indices"], order[:, :3])
    np.testing.assert_allclose(top["teacher_topk_values"], np.take_along_axis(
        logits, order[:, :3], -1), rtol=1e-5, atol=1e-5)
    tail = np.take_along_axis(logits, order[:, 3:], -1)
    np.testing.assert_allclose(top["teacher_tail_logsumexp"], _lse(tail), rtol=1e-5, atol=1e-5)


def test_random_access_and_padding_rows(full_store):
    ids = np.array([1436, 5, -1, 700, 5, 0, -1])
    out = full_store.lookup(ids)
    whole = full_store.lookup(np.arange(N))
    for row, i in enumerate(ids):
        for key, value in out.items():
            if i >= 0:
                np.testing.assert_array_equal(value[row], whole[key][i])
    pad = jax.nn.softmax(dense_teacher_logits(out["teacher_topk_values"], out[
        "teacher_topk_indices"], out["teacher_logsumexp"], C))
    np.testing.assert_allclose(pad[ids < 0], 1 / C, rtol=1e-6)  # padding: a uniform teacher
    assert not out["teacher_feature_embedding"][ids < 0].any()
    with pytest.raises(ValueError) as e:
        full_store.lookup(np.array([0, N]))
    assert str(e.value) == (
        f"config.teacher.store='{full_store.path}' holds examples 0..1436 of digits[train]; "
        "asked for [1437]")


def test_dense_logits_with_all_classes_are_the_teacher_softmax(full_store, online):
    logits, _ = online
    out = full_store.lookup(np.arange(N))
    dense = np.asarray(dense_teacher_logits(out["teacher_topk_values"], out[
        "teacher_topk_indices"], out["teacher_logsumexp"], C))
    np.testing.assert_allclose(dense, _log_softmax(logits), rtol=1e-5, atol=1e-5)
    for t in (1.0, 4.0):  # at any temperature
        np.testing.assert_allclose(jax.nn.softmax(dense / t), np.exp(_log_softmax(logits / t)),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 7, 9])
def test_dense_logits_keep_top_k_exact_and_spread_the_tail(k, online, top3_store):
    logits, _ = online
    p = np.exp(_log_softmax(logits))
    order = np.argsort(-logits, axis=-1)
    top_idx = order[:, :k]
    values = np.take_along_axis(logits, top_idx, -1).astype(np.float32)
    lse = _lse(logits).astype(np.float32)
    tail_lse = _lse(np.take_along_axis(logits, order[:, k:], -1)).astype(np.float32)
    if k == 3:  # the store's own entries
        out = top3_store.lookup(np.arange(N))
        values, top_idx = out["teacher_topk_values"], out["teacher_topk_indices"]
        lse, tail_lse = out["teacher_logsumexp"], out["teacher_tail_logsumexp"]
    expected = np.repeat(((1 - np.take_along_axis(p, top_idx, -1).sum(-1)) / (C - k))[:, None],
                         C, 1)
    np.put_along_axis(expected, top_idx, np.take_along_axis(p, top_idx, -1), -1)
    for tail in (tail_lse, None):  # exact tail log-sum-exp, or 1 - sum of the top k
        q = np.asarray(jax.nn.softmax(dense_teacher_logits(values, top_idx, lse, C,
                                                           tail_logsumexp=tail)), np.float64)
        np.testing.assert_allclose(q, expected, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)


def test_kd_from_the_store_equals_online_kd(full_store, top3_store, online, capsys):
    """On one batch, at T = 4: equal for the full-k store; the gap of top-k stores reported."""
    logits, _ = online
    ids = np.arange(100, 164)
    teacher = jnp.asarray(logits[ids], jnp.float32)
    student = jax.random.normal(jax.random.PRNGKey(0), (len(ids), C)) * 2.0
    online_kd = kd_loss(student, teacher, temperature=4.0)
    batch = {k: jnp.asarray(v) for k, v in full_store.lookup(ids).items()}
    stored, features = teacher_outputs_from_batch(batch, C)
    np.testing.assert_allclose(kd_loss(student, stored, temperature=4.0), online_kd, rtol=2e-5,
                               atol=1e-6)
    assert set(features) == {"embedding"}
    rows = [f"online KD at T=4, mean over 64 examples: {float(online_kd.mean()):.6f}"]
    for k in (1, 2, 3, 5, 9, 10):
        values, idx = jax.lax.top_k(teacher, k)
        lse = jax.nn.logsumexp(teacher, -1)
        if k == 3:  # from the written top-3 store
            s = top3_store.lookup(ids)
            assert np.array_equal(s["teacher_topk_indices"], np.asarray(idx))
        dense = dense_teacher_logits(values, idx, lse, C)
        kd = kd_loss(student, dense, temperature=4.0)
        gap = float(kd.mean() - online_kd.mean())
        abs_gap = jnp.abs(kd - online_kd)
        rows.append(f"k={k:2d}: KD {float(kd.mean()):.6f}  gap {gap:+.6f} "
                    f"({gap / float(online_kd.mean()):+.2%})  per-example |gap| mean "
                    f"{float(abs_gap.mean()):.6f} max {float(abs_gap.max()):.6f}")
        if k == C:
            assert abs(gap) < 1e-5
    with capsys.disabled():
        print("\n" + "\n".join(rows))


def test_a_mismatched_store_is_refused_naming_what_differs(full_store, kd_config, teacher):
    _, sha = teacher
    info = data.prepare("digits")
    check_store(full_store, kd_config, sha, info=info)  # the store's own run: accepted
    assert full_store.fingerprint == expected_fingerprint(kd_config, sha, info=info)
    other = teacher_sha256({"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}})
    stored = full_store.source["teacher_params_sha256"][:12]
    cases = [
        (kd_config, other, (f"teacher checkpoint: teacher_params_sha256 is {stored}... in the "
                            f"store but {other[:12]}... (config.teacher.checkpoint="
                            f"'{kd_config.teacher.checkpoint}') in this run")),
        (_set(kd_config, **{"data.train_split": "test"}), sha, (
            "dataset/split: split is train in the store but test in this run; dataset/split: "
            "num_examples is 1437 in the store but 360 in this run")),
        (_set(kd_config, **{"data.mean": (0.5,)}), sha,
         "preprocessing: mean is [0.0] in the store but [0.5] in this run"),
        (_set(kd_config, **{"data.std": (0.3,)}), sha,
         "preprocessing: std is [1.0] in the store but [0.3] in this run"),
    ]
    for config, digest, what in cases:
        assert expected_fingerprint(config, digest, info=info) != full_store.fingerprint
        assert refusal(lambda c=config, d=digest: check_store(full_store, c, d, info=info)) == (
            f"config.teacher.store='{full_store.path}' was not written for this run: {what}. "
            "Write a store for it with `python -m jaxdistill.teacher_store --config=... "
            "--store=NEW_DIR` (same config and overrides), or run the teacher online "
            "(config.teacher.store='')")


def test_augmentation_with_a_store_is_refused(full_store, kd_config, tmp_path):
    jitter = _set(kd_config, **{"data.augment": "jitter"})
    why = ("holds the teacher's outputs on un-augmented images, which do not describe the randomly "
        "augmented ones of config.data.augment='jitter'; set config.data.augment='none' or run "
        "the teacher online (config.teacher.store='')")
    refused = f"config.teacher.store='{full_store.path}' {why}"
    assert refusal(lambda: check_config(jitter, full_store.path), full_store.path) == refused
    with_field = _set(jitter, **{"teacher.store": full_store.path})  # the trainer's field
    assert refusal(lambda: check_config(with_field), full_store.path) == refused
    sha = full_store.source["teacher_params_sha256"]
    assert refusal(lambda: check_store(full_store, jitter, sha), full_store.path) == refused
    assert refusal(lambda: write_store(jitter, str(tmp_path / "never")), tmp_path) == (
        f"--store='{tmp_path / 'never'}' {why}")
    check_config(_set(kd_config, **{"teacher.store": full_store.path}))  # augment 'none': fine
    check_config(jitter)  # no store: fine


def test_bad_writes_fail_before_running_the_teacher(kd_config, full_store, tmp_path):
    with pytest.raises(ValueError) as e:
        write_store(kd_config, str(tmp_path / "a"), top_k=11)
    assert str(e.value) == "--top_k=11: must be in [0, 10] (0 = all classes)"
    with pytest.raises(ValueError) as e:
        write_store(kd_config, str(tmp_path / "b"), features=("stage3",))
    assert str(e.value) == (
        "--features: ['stage3'] not among the teacher's features ['embedding', 'hidden1']")
    with pytest.raises(ValueError) as e:
        write_store(kd_config, full_store.path)
    assert str(e.value) == (
        f"--store='{full_store.path}' is a store; choose a new directory (a store is written "
        "once and never overwritten)")
    with pytest.raises(ValueError) as e:
        TeacherStore(str(tmp_path))
    assert str(e.value) == (
        f"config.teacher.store='{tmp_path}' is not a teacher store (no store.json; an "
        "interrupted write leaves none); write one with `python -m jaxdistill.teacher_store "
        "--config=... --store=DIR`")
    assert not os.listdir(tmp_path)


def test_hook_feeds_the_rows_of_each_index_on_8_devices(full_store, online):
    assert jax.device_count() == 8
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    sharding = parallel.batch_sharding(mesh)
    info = data.prepare("digits")
    whole = full_store.lookup(np.arange(N))
    batches = data.make_train_iterator(info, split="train", reader="grain", global_batch_size=64,
                                       seed=3, sharding=sharding, extra_fields=full_store.extra_fields)
    plain = data.make_train_iterator(info, split="train", reader="grain", global_batch_size=64,
                                     seed=3, sharding=sharding)
    for _ in range(2):
        batch, reference = next(batches), next(plain)
        for key in reference:  # unchanged batch
            np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(reference[key]))
        index = np.asarray(batch["index"])
        for key in whole:
            assert batch[key].sharding == sharding and batch[key].shape[0] == 64
            np.testing.assert_array_equal(np.asarray(batch[key]), whole[key][index])
        logits, features = jax.jit(teacher_outputs_from_batch, static_argnums=1)(batch, C)
        assert logits.sharding.is_equivalent_to(sharding, 2)  # computed where the rows live
        np.testing.assert_allclose(logits, _log_softmax(online[0][index]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(features["embedding"], online[1][index], rtol=1e-5, atol=1e-5)
    evals = data.make_eval_iterator(info, split="train", reader="grain", global_batch_size=120,
                                    sharding=sharding, extra_fields=full_store.extra_fields)
    last = list(evals)[-1]  # 1437 = 11 * 120 + 117: three padding rows
    index, mask = np.asarray(last["index"]), np.asarray(last["mask"])
    assert (index < 0).sum() == 3 and np.array_equal(mask > 0, index >= 0)
    values = np.asarray(last["teacher_topk_values"])
    np.testing.assert_array_equal(values[index >= 0], whole["teacher_topk_values"][index[index >= 0]])
    assert not values[index < 0].any()

    def clash(batch):
        return {"label": batch["label"]}

    def short(batch):
        return {"x": np.zeros(3)}

    for hook, message in (
            (clash, "extra_fields returned ['label'], which the batch already has"),
            (short, ("extra_fields: field 'x' has shape (3,); its leading axis must be the host "
                     "batch's 120 rows"))):
        with pytest.raises(ValueError) as e:
            next(iter(data.make_eval_iterator(info, split="train", reader="grain",
                                              global_batch_size=120, sharding=sharding,
                                              extra_fields=hook)))
        assert str(e.value) == message


def test_hook_with_the_tf_reader(full_store):
    pytest.importorskip("tensorflow")
    sharding = parallel.batch_sharding(parallel.make_mesh((-1, 1), ("data", "model")))
    info = data.prepare("digits")
    whole = full_store.lookup(np.arange(N))
    train = data.make_train_iterator(info, split="train", reader="tf", global_batch_size=64,
                                     seed=0, sharding=sharding, extra_fields=full_store.extra_fields)
    last = list(data.make_eval_iterator(info, split="train", reader="tf", global_batch_size=120,
                                        sharding=sharding, extra_fields=full_store.extra_fields))[-1]
    for batch in (next(train), last):
        index = np.asarray(batch["index"])
        real = index >= 0
        np.testing.assert_array_equal(np.asarray(batch["teacher_logsumexp"])[real],
                                      whole["teacher_logsumexp"][index[real]])
    assert (~real).sum() == 3


def _train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_training_from_the_store_runs_without_the_teacher(kd_config, full_store, top3_store,
                                                          tmp_path):
    """The trainer reading a full-k store follows the online KD run step for step; a
    top-3 store stays close. The jitted step takes no teacher variables."""
    from jaxdistill.run_setup import prepare_run
    base = _set(kd_config, baseline=False, log_every=1, num_steps=8)
    online_summary = train_and_evaluate(base, str(tmp_path / "online"))
    stored = _set(base, **{"teacher.store": full_store.path})
    setup = prepare_run(stored)
    assert setup.teacher_input_abstract is None and setup.ctx.teacher_def is None
    store_summary = train_and_evaluate(stored, str(tmp_path / "store"))
    online_losses = _train_losses(tmp_path / "online")
    for key in ("loss", "ce", "kd"):
        np.testing.assert_allclose([r[key] for r in _train_losses(tmp_path / "store")],
                                   [r[key] for r in online_losses], rtol=1e-5, err_msg=key)
    assert store_summary["student_accuracy"] == online_summary["student_accuracy"]
    assert "teacher_accuracy" not in store_summary  # no teacher in memory to evaluate
    top3 = train_and_evaluate(_set(base, **{"teacher.store": top3_store.path}),
                              str(tmp_path / "top3"))
    kd_gap = np.abs(np.array([r["kd"] for r in _train_losses(tmp_path / "top3")])
                    - [r["kd"] for r in online_losses])
    assert 0 < kd_gap.max() < 0.5 * max(r["kd"] for r in online_losses)
    assert abs(top3["student_accuracy"] - online_summary["student_accuracy"]) < 0.2


def test_store_run_refuses_a_store_for_another_teacher(kd_config, full_store, tmp_path):
    other = str(tmp_path / "other_teacher")
    train_and_evaluate(_set(experiment.teacher_config(kd_config), seed=5), other)
    config = _set(kd_config, **{"baseline": False, "teacher.store": full_store.path,
                                "teacher.checkpoint": other})
    message = refusal(lambda: train_and_evaluate(config, str(tmp_path / "run")), tmp_path / "run")
    assert store_of_another_teacher(full_store, other).fullmatch(message), message
