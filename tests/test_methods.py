"""Every method of the library trains end to end from its config on the 8-device mesh:
its loss goes down, it matches a 1-device run, and aux state survives a resume."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, device_env, load_config
from refusals import refusal

from jaxdistill import experiment
from jaxdistill.recipes import METHODS
from jaxdistill.train import train_and_evaluate

ONE_DEVICE_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.path.join({root!r}, "tests"))
from conftest import load_config
from jaxdistill.train import train_and_evaluate
out = {{}}
for method in {methods!r}:
    config = load_config("mnist_methods", method + ",tiny")
    config.teacher.checkpoint = {teacher!r}
    workdir = os.path.join({workdir!r}, method)
    train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        out[method] = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
print("LOSSES" + json.dumps(out))
"""


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("methods_teacher"))
    train_and_evaluate(experiment.teacher_config(load_config("mnist_methods", "kd,tiny")), workdir)
    return workdir


@pytest.fixture(scope="module")
def one_device(teacher, tmp_path_factory):
    """Per-step losses of every method on a single device (one subprocess for all)."""
    script = ONE_DEVICE_SCRIPT.format(root=ROOT, methods=METHODS, teacher=teacher,
                                      workdir=str(tmp_path_factory.mktemp("one_device")))
    env = device_env(1)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LOSSES"))
    return json.loads(line[len("LOSSES"):])


def _config(method, teacher, schedule="cosine", **overrides):
    config = load_config("mnist_methods", f"{method},tiny")
    config.teacher.checkpoint = teacher
    config.optimizer.schedule = schedule
    for key, value in overrides.items():
        config[key] = value  # top-level fields only
    return config


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_matches_one_device(method, teacher, one_device, tmp_path):
    assert len(jax.devices()) == 8
    train_and_evaluate(_config(method, teacher), str(tmp_path))
    losses = _losses(tmp_path)
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    np.testing.assert_allclose(losses, one_device[method], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["fitnet", "crd", "adversarial"])
def test_aux_state_survives_resume(method, teacher, tmp_path):
    """Adapters, memory banks and the discriminator (with its own optimizer state) are
    checkpointed: 8 steps + resume to 16 lands on the 16-step run's parameters (constant
    learning rate, so that the 8-step run is a prefix of the 16-step one)."""
    straight = train_and_evaluate(_config(method, teacher, "constant"), str(tmp_path / "a"))
    train_and_evaluate(_config(method, teacher, "constant", num_steps=8), str(tmp_path / "b"))
    resumed = train_and_evaluate(_config(method, teacher, "constant"), str(tmp_path / "b"))
    assert resumed["student_params_sha256"] == straight["student_params_sha256"]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


@pytest.mark.parametrize("method, field, value, message", [
    ("at", "student_feature", ("stage1", "stage9"),
     ("config.objective.at.student_feature: the student model has no feature 'stage9'; it has "
      "['embedding', 'stage1', 'stage2']")),
    ("sp", "teacher_feature", "logits",
     ("config.objective.sp.teacher_feature: the teacher model has no feature 'logits'; it has "
      "['embedding', 'stage1', 'stage2']")),
    ("fitnet", "student_feature", "stage1",
     ("config.objective.hint: student feature (32, 4, 4, 8) and teacher feature "
      "(32, 2, 2, 16) differ in more than the channel axis")),
    ("at", "teacher_feature", ("stage2",),
     ("config.objective.at: student_feature ('stage1', 'stage2') and teacher_feature "
      "('stage2',) must be one name each or as many names each")),
    ("crd", "num_negatives", 5000,
     ("config.objective.crd: num_negatives must be in [1, 1436] for a training split of 1437 "
      "examples, got 5000")),
])
def test_invalid_method_settings_fail_before_compiling(method, field, value, message, teacher):
    from jaxdistill.run_setup import prepare_run
    config = _config(method, teacher)
    term = {"fitnet": "hint"}.get(method, method)
    config.objective[term][field] = value
    assert refusal(lambda: prepare_run(config)) == message


def test_at_pairs_stages_of_different_sizes(teacher):
    """AT from the teacher's 4x4 stage1 onto the student's 2x2 stage2 (the larger map is
    pooled, as the reference does) and over both stages at once trace in the real step."""
    from jaxdistill.run_setup import prepare_run
    for s_names, t_names in ((("stage2",), ("stage1",)), (("stage1", "stage2"),) * 2):
        config = _config("at", teacher)
        config.objective.at.student_feature = s_names
        config.objective.at.teacher_feature = t_names
        setup = prepare_run(config)
        (term,) = [t for t in setup.ctx.objective.terms if t.name == "at"]
        assert dict(term.hparams)["student_feature"] == s_names


def test_two_teachers_train_end_to_end(teacher, tmp_path):
    """A second teacher (another seed) under config.extra_teachers: one KD term on the
    mean of both teachers' softened probabilities and one on the second teacher alone."""
    second = str(tmp_path / "second")
    teacher_cfg = experiment.teacher_config(load_config("mnist_methods", "kd,tiny"))
    teacher_cfg.seed = 1
    train_and_evaluate(teacher_cfg, second)
    config = _config("kd", teacher)
    with config.unlocked():
        config.extra_teachers.second = {"model": "cnn", "kwargs": {"widths": (8, 16), "hidden": 32},
                                        "checkpoint": second}
    with config.unlocked():
        config.objective.kd.teacher = "mean"
        config.objective.kd_second = {"loss": "kd", "weight": 0.5, "teacher": "second"}
    train_and_evaluate(config, str(tmp_path / "run"))
    losses = _losses(tmp_path / "run")
    assert np.all(np.isfinite(losses)) and np.mean(losses[-4:]) < np.mean(losses[:4])
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        record = json.loads(f.readline())
    assert {"kd", "kd_second"} <= set(record)
