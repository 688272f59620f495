"""End to end: the CLI on a tiny config, resume, 1 vs 8 devices, teacher lifecycle (bad
input, config by config, is tests/test_errors.py's)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, device_env, load_config, set_fields
from jax_events import JaxEvents
from refusals import refusal

from jaxdistill import checkpoint, data
from jaxdistill.run_setup import prepare_run
from jaxdistill.step import forward, teacher_step
from jaxdistill.train import compile_steps, load_teachers, train_and_evaluate


def _cli(*args, devices=8, check=True):
    env = device_env(devices)
    proc = subprocess.run([sys.executable, "-m", "jaxdistill.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _records(workdir, split="train"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny demo through the CLI: teacher, scratch student, distilled student."""
    workdir = str(tmp_path_factory.mktemp("demo"))
    proc = _cli("--config=configs/digits_kd.py:tiny", f"--workdir={workdir}")
    with open(os.path.join(workdir, "summary.json")) as f:
        return workdir, json.load(f), proc.stdout


def _kd_config(teacher_dir, **overrides):
    """The distillation stage of the tiny demo, from the demo's teacher."""
    config = load_config("digits_kd", "tiny")
    config.teacher.checkpoint = os.path.join(teacher_dir, "teacher")
    config.baseline = False
    config.log_every = 1
    return set_fields(config, **overrides)


def test_demo_writes_summary_table_metrics_and_checkpoints(demo):
    workdir, summary, stdout = demo
    for key in ("student_accuracy", "teacher_accuracy", "scratch_accuracy", "agreement"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["steps"] == 12
    assert summary["examples_per_second"] > 0
    assert len(summary["student_params_sha256"]) == 64
    assert summary["student_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert summary["teacher_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert summary["student_flops_per_example"] > 2 * (64 * 32 + 32 * 10)
    assert "distilled student (mlp)" in stdout and "student from scratch (mlp)" in stdout
    assert summary["scratch_params_sha256"] != summary["student_params_sha256"]
    train = _records(workdir)
    assert {"loss", "ce", "kd", "learning_rate", "examples_per_second"} <= set(train[-1])
    assert [r["step"] for r in _records(workdir, "eval")] == [6, 12]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    for stage in ("teacher", "scratch", ""):
        steps = os.listdir(os.path.join(workdir, stage, "checkpoints"))
        assert steps and all(s.isdigit() for s in steps)


def _mlp_forward(variables, images, mean, std):
    """Independent NumPy forward pass of a ReLU MLP from its parameter dict."""
    params = variables["params"]
    h = ((images - mean) / std).reshape(len(images), -1)
    layers = [params["hidden"][i] for i in sorted(params["hidden"])] + [params["fc"]]
    for i, layer in enumerate(layers):
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def test_reported_accuracies_match_a_numpy_forward_pass(demo):
    """Accuracy and agreement in summary.json, recomputed from the saved parameters."""
    workdir, summary, _ = demo
    config = _kd_config(workdir)
    setup = prepare_run(config)
    info = setup.info
    student_abstract = {"params": setup.abstract_state.params["student"],
                        "batch_stats": setup.abstract_state.batch_stats}
    student = jax.device_get(checkpoint.load_teacher(workdir, student_abstract))
    teacher = jax.device_get(checkpoint.load_teacher(config.teacher.checkpoint,
                                                     setup.teacher_abstract))
    images, labels, masks = [], [], []
    for batch in data.make_eval_iterator(info, split="test", reader="grain", global_batch_size=120,
                                         sharding=setup.batch_sharding):
        images.append(np.asarray(batch["image"]))
        labels.append(np.asarray(batch["label"]))
        masks.append(np.asarray(batch["mask"]))
    images, labels = np.concatenate(images), np.concatenate(labels)
    keep = np.concatenate(masks) > 0
    s_logits = _mlp_forward(nnx_pure(student), images, 0.0, 1.0)[keep]
    t_logits = _mlp_forward(nnx_pure(teacher), images, 0.0, 1.0)[keep]
    s, t = s_logits.argmax(-1), t_logits.argmax(-1)
    assert keep.sum() == info.splits["test"]
    assert summary["student_accuracy"] == pytest.approx(np.mean(s == labels[keep]), abs=1e-9)
    assert summary["teacher_accuracy"] == pytest.approx(np.mean(t == labels[keep]), abs=1e-9)
    assert summary["agreement"] == pytest.approx(np.mean(s == t), abs=1e-9)
    scratch = jax.device_get(checkpoint.load_teacher(os.path.join(workdir, "scratch"),
                                                     student_abstract))
    z_logits = _mlp_forward(nnx_pure(scratch), images, 0.0, 1.0)[keep]
    z = z_logits.argmax(-1)
    assert summary["scratch_accuracy"] == pytest.approx(np.mean(z == labels[keep]), abs=1e-9)
    assert summary["scratch_agreement"] == pytest.approx(np.mean(z == t), abs=1e-9)
    # the bias report: per-class accuracy, ECE and repeated teacher errors of all three
    y = labels[keep]
    for name, logits in (("student", s_logits), ("teacher", t_logits), ("scratch", z_logits)):
        pred = logits.argmax(-1)
        np.testing.assert_allclose(summary[f"{name}_per_class_accuracy"],
                                   [np.mean(pred[y == c] == c) for c in range(10)], atol=1e-9)
        assert summary[f"{name}_ece"] == pytest.approx(_ece(logits, y), abs=1e-5)
    wrong = t != y
    assert summary["error_repeat"] == pytest.approx(np.mean(s[wrong] == t[wrong]), abs=1e-9)
    assert summary["scratch_error_repeat"] == pytest.approx(np.mean(z[wrong] == t[wrong]),
                                                            abs=1e-9)
    report = summary["bias"]
    growth = [(np.mean(t[y == c] == c) - np.mean(s[y == c] == c))
              - (np.mean(t[y == c] == c) - np.mean(z[y == c] == c)) for c in range(10)]
    np.testing.assert_allclose([r["gap_growth"] for r in report["per_class"]], growth, atol=1e-9)
    assert report["classes_gap_grew_most"] == sorted(range(10), key=lambda c: (-growth[c], c))[:3]
    assert report["teacher_error_repeat_share"] == {"student": summary["error_repeat"],
                                                    "scratch": summary["scratch_error_repeat"]}


def _ece(logits, labels, bins=15):
    """Expected calibration error in float64: 15 equal-width confidence bins (Guo et al.)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf, correct = p.max(-1), p.argmax(-1) == labels
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def nnx_pure(state):
    from flax import nnx
    return jax.tree.map(np.asarray, {k: nnx.to_pure_dict(v) for k, v in state.items()})


def test_resume_lands_on_the_same_parameters(demo, tmp_path, capsys):
    """3 steps, stop, rerun to 6 == 6 uninterrupted steps (data order, rng, optimizer)."""
    kw = {"optimizer.schedule": "constant", "checkpoint_every": 3, "eval_every": 3,
          "data.augment": "jitter"}
    straight = train_and_evaluate(_kd_config(demo[0], num_steps=6, **kw), str(tmp_path / "a"))
    train_and_evaluate(_kd_config(demo[0], num_steps=3, **kw), str(tmp_path / "b"))
    resumed = train_and_evaluate(_kd_config(demo[0], num_steps=6, **kw), str(tmp_path / "b"))
    assert "resumed from step 3" in capsys.readouterr().out
    assert resumed["student_params_sha256"] == straight["student_params_sha256"]
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # a finished run restores and reports without training
    again = train_and_evaluate(_kd_config(demo[0], num_steps=6, **kw), str(tmp_path / "b"))
    assert again["student_params_sha256"] == straight["student_params_sha256"]
    assert again["student_accuracy"] == straight["student_accuracy"]


@pytest.fixture(scope="module")
def one_device(demo, tmp_path_factory):
    """The distillation stage on a single device, through the CLI."""
    workdir = str(tmp_path_factory.mktemp("one_device"))
    _cli("--config=configs/digits_kd.py:tiny", f"--workdir={workdir}", "--config.baseline=False",
         f"--config.teacher.checkpoint={os.path.join(demo[0], 'teacher')}",
         "--config.log_every=1", "--config.data.augment=jitter", devices=1)
    with open(os.path.join(workdir, "summary.json")) as f:
        return _records(workdir), json.load(f)


@pytest.mark.parametrize("mesh, axes, student_rule, teacher_rule, teacher_devices", [
    ((-1, 1), ("data", "model"), "replicated", "replicated", 0),
    ((4, 2), ("data", "model"), "fsdp", "tensor", 0),
    ((2, 4), ("data", "model"), "tensor", "fsdp", 0),
    ((2, 2, 2), ("data", "fsdp", "tensor"), "fsdp", "tensor", 0),
    ((-1, 1), ("data", "model"), "replicated", "fsdp", 4),  # teacher on its own 4 devices
])
def test_eight_devices_equal_one(demo, one_device, tmp_path, mesh, axes, student_rule,
                                 teacher_rule, teacher_devices):
    config = _kd_config(demo[0], **{"mesh.shape": mesh, "mesh.axes": axes,
                                    "mesh.student_rule": student_rule,
                                    "mesh.teacher_rule": teacher_rule,
                                    "mesh.teacher_devices": teacher_devices,
                                    "data.augment": "jitter"})
    summary = train_and_evaluate(config, str(tmp_path))
    records, reference = one_device
    ours = _records(tmp_path)
    for key in ("loss", "ce", "kd", "accuracy", "agreement"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in records],
                                   rtol=2e-5, atol=1e-6, err_msg=key)
    for key in ("student_accuracy", "teacher_accuracy", "agreement"):
        assert summary[key] == pytest.approx(reference[key], abs=1e-9)


def _three_steps(setup, train_fn, teacher):
    """A fresh state after three train steps on real batches."""
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(jax.random.PRNGKey(0))
    batches = data.make_train_iterator(setup.info, split="train", reader="grain",
                                       global_batch_size=64, seed=0,
                                       sharding=setup.batch_sharding)
    for _ in range(3):
        state, _ = train_fn(state, teacher, next(batches))
    return state


def test_step_traces_once_and_leaves_the_teacher_alone(demo):
    setup = prepare_run(_kd_config(demo[0]))
    train_fn, _ = compile_steps(setup)
    teacher = checkpoint.load_teacher(setup.config.teacher.checkpoint, setup.teacher_abstract)
    before = jax.tree.map(np.array, teacher)
    with JaxEvents() as seen:
        state = _three_steps(setup, train_fn, teacher)
    assert seen.traces["train_step"] == 1 and seen.compiles["jit(train_step)"] == 1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, teacher), before)
    assert int(state.step) == 3


def test_bfloat16_teacher(demo, tmp_path):
    summary = train_and_evaluate(_kd_config(demo[0], **{"teacher.dtype": "bfloat16"}),
                                 str(tmp_path))
    config = _kd_config(demo[0], **{"teacher.dtype": "bfloat16"})
    setup = prepare_run(config)
    leaves = jax.tree.leaves(setup.teacher_abstract)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    with open(os.path.join(demo[0], "teacher", "summary.json")) as f:
        f32_accuracy = json.load(f)["student_accuracy"]
    assert abs(summary["teacher_accuracy"] - f32_accuracy) < 0.05


def test_tf_data_reader_runs_end_to_end(demo, tmp_path):
    pytest.importorskip("tensorflow")
    summary = train_and_evaluate(_kd_config(demo[0], **{"data.reader": "tf"}), str(tmp_path))
    assert summary["steps"] == 12 and 0.0 <= summary["student_accuracy"] <= 1.0
    assert len(_records(tmp_path)) == 12 and np.isfinite([r["loss"] for r in _records(tmp_path)]).all()


COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(-start)?\(")


def test_data_parallel_step_all_reduces_student_gradients_only(demo):
    """Compiled HLO of the replicated data-parallel step: its only collectives are
    all-reduces, of exactly the student's gradients plus a few metric scalars; nothing of
    the teacher's (no teacher gradient exists to be reduced)."""
    setup = prepare_run(_kd_config(demo[0]))
    train_fn, _ = compile_steps(setup)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                        sharding=setup.batch_sharding),
                         setup.abstract_batch())
    hlo = train_fn.lower(setup.abstract_state, setup.teacher_abstract, batch).compile().as_text()
    found = COLLECTIVE.findall(hlo)
    assert found and {kind for _, kind, _ in found} == {"all-reduce"}
    shapes = [tuple(sorted(int(d) for d in dims.split(",") if d))
              for result, _, _ in found for dims in re.findall(r"\w+\[([\d,]*)\]", result)]
    student = sorted(tuple(sorted(x.shape)) for x in
                     jax.tree.leaves(setup.abstract_state.params["student"]))
    assert sorted(s for s in shapes if s) == student
    assert len([s for s in shapes if not s]) <= 8  # loss, term and metric scalars


def test_teacher_submesh_uses_its_own_devices_and_compiles_once(demo):
    setup = prepare_run(_kd_config(demo[0], **{"mesh.teacher_devices": 4}))
    student_devices, teacher_devices = set(setup.mesh.devices.flat), set(
        setup.teacher_mesh.devices.flat)
    assert len(student_devices) == len(teacher_devices) == 4
    assert not student_devices & teacher_devices
    train_fn, _ = compile_steps(setup)
    teacher = load_teachers(setup)
    assert {d for x in jax.tree.leaves(teacher) for d in x.devices()} == teacher_devices
    with JaxEvents() as seen:
        state = _three_steps(setup, train_fn, teacher)
    assert {d for x in jax.tree.leaves(state) for d in x.devices()} == student_devices
    assert [seen.traces[f] for f in ("teacher_step", "student_update")] == [1, 1]
    assert [seen.compiles[f"jit({f})"] for f in ("teacher_step", "student_update")] == [1, 1]
    assert refusal(lambda: prepare_run(_kd_config(demo[0], **{"mesh.teacher_devices": 8}))) == (
        "config.mesh.teacher_devices must be in [0, 7], got 8")


def test_student_mixed_precision_keeps_float32_params_and_optimizer_state(demo, tmp_path):
    config = _kd_config(demo[0], **{"student.dtype": "bfloat16", "teacher.dtype": "bfloat16"})
    setup = prepare_run(config)
    teachers = jax.eval_shape(lambda s, t, b: teacher_step(setup.ctx, s.rng, s.step, t, b)[1],
                              setup.abstract_state, setup.teacher_abstract,
                              setup.abstract_batch())
    assert teachers["teacher"][1]["hidden1"].dtype == jnp.bfloat16  # computed in bf16
    student = jax.eval_shape(lambda s, x: forward(setup.ctx.student_def, s.params["student"],
                                                  s.batch_stats, x, train=True)[1],
                             setup.abstract_state, setup.abstract_batch(64)["image"])
    assert student["hidden1"].dtype == jnp.bfloat16
    for leaf in jax.tree.leaves((setup.abstract_state.params, setup.abstract_state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf
    summary = train_and_evaluate(config, str(tmp_path))
    assert np.isfinite([r["loss"] for r in _records(tmp_path)]).all()
    assert 0 <= summary["student_accuracy"] <= 1
