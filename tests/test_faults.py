"""Surviving faults, through the real CLI: SIGTERM (preemption, repeated), SIGKILL, a
corrupted or byte-flipped newest checkpoint, a changed config on rerun, and a non-finite
loss."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, device_env, load_config
from refusals import tree

from jaxdistill import experiment
from jaxdistill.train import train_and_evaluate

STEPS = 300
ENV = device_env(1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fault_teacher"))
    train_and_evaluate(experiment.teacher_config(load_config("digits_kd", "tiny")), workdir)
    return workdir


def _args(workdir, teacher):
    return [sys.executable, "-m", "jaxdistill.main", "--config=configs/digits_kd.py:tiny",
            f"--workdir={workdir}", "--config.baseline=False",
            f"--config.teacher.checkpoint={teacher}", f"--config.num_steps={STEPS}",
            "--config.checkpoint_every=20", "--config.eval_every=0", "--config.log_every=10",
            "--config.data.augment=jitter"]


def _run(workdir, teacher):
    proc = subprocess.run(_args(workdir, teacher), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if r["split"] == "train"]


def _sha(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)["student_params_sha256"]


def _steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def _read(f):
    f.seek(0)
    return f.read()


def _start_and_wait(workdir, teacher, until_step):
    """Starts a run and returns it once metrics.jsonl shows `until_step`."""
    out = open(os.path.join(os.path.dirname(workdir), "stdout.txt"), "w+")  # noqa: SIM115
    err = open(os.path.join(os.path.dirname(workdir), "stderr.txt"), "w+")  # noqa: SIM115
    proc = subprocess.Popen(_args(workdir, teacher), cwd=ROOT, env=ENV, stdout=out, stderr=err,
                            text=True)
    proc.out, proc.err = out, err
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if any(json.loads(line)["step"] >= until_step for line in f if line.strip()):
                    return proc
        assert proc.poll() is None, _read(proc.err)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("run did not reach the step in time")


@pytest.fixture(scope="module")
def reference_run(teacher, tmp_path_factory):
    """The workdir of an uninterrupted run (tests change copies of it, never it)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run(workdir, teacher)
    return workdir


@pytest.fixture(scope="module")
def reference(reference_run):
    """The sha256 of an uninterrupted run."""
    return _sha(reference_run)


def test_sigterm_checkpoints_exits_zero_and_resumes(teacher, reference, tmp_path):
    proc = _start_and_wait(str(tmp_path / "run"), teacher, until_step=60)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out = _read(proc.out)
    assert proc.returncode == 0, _read(proc.err)[-3000:]
    stopped = _steps(tmp_path / "run")[-1]
    assert 60 <= stopped < STEPS
    assert f"preempted: saved a checkpoint at step {stopped}" in out
    resumed = _run(str(tmp_path / "run"), teacher)
    assert f"resumed from step {stopped}" in resumed.stdout
    assert _sha(tmp_path / "run") == reference
    assert _train_steps(tmp_path / "run") == sorted({*range(10, STEPS + 1, 10), stopped})


def test_sigkill_then_rerun_equals_uninterrupted(teacher, reference, tmp_path):
    proc = _start_and_wait(str(tmp_path / "run"), teacher, until_step=70)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not os.path.exists(tmp_path / "run" / "summary.json")
    resumed = _run(str(tmp_path / "run"), teacher)
    assert "resumed from step" in resumed.stdout
    assert _sha(tmp_path / "run") == reference
    # the records of the steps between the checkpoint and the kill are not repeated
    assert _train_steps(tmp_path / "run") == list(range(10, STEPS + 1, 10))


def test_repeated_sigterms_still_exit_zero(teacher, tmp_path):
    proc = _start_and_wait(str(tmp_path / "run"), teacher, until_step=60)
    while proc.poll() is None:  # notices keep coming until the process is gone
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    assert proc.returncode == 0, _read(proc.err)[-3000:]
    stopped = _steps(tmp_path / "run")[-1]
    assert f"preempted: saved a checkpoint at step {stopped}" in _read(proc.out)
    assert "SIGTERM again while stopping for the first one; ignored" in _read(proc.err)


def test_corrupted_newest_checkpoint_falls_back(teacher, reference, tmp_path):
    _run(str(tmp_path), teacher)
    newest, previous = _steps(tmp_path)[-1], _steps(tmp_path)[-2]
    model_dir = tmp_path / "checkpoints" / str(newest) / "model"
    for root, _, files in os.walk(model_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")
    # rerun: the corrupted step is set aside, not trusted, and its steps are trained again
    proc = subprocess.run(_args(str(tmp_path), teacher), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint at step {newest} is unreadable" in proc.stdout
    assert f"falling back to step {previous}" in proc.stdout
    assert f"resumed from step {previous}" in proc.stdout
    assert os.listdir(tmp_path / "corrupted_checkpoints")[0].startswith(f"{newest}-")
    assert _sha(tmp_path) == reference  # training redid the steps of the corrupted checkpoint


def test_flipped_bytes_in_the_newest_checkpoint_fall_back(teacher, reference_run, reference,
                                                          tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    previous, newest = _steps(workdir)[-2:]
    # the parameters' bytes (OCDBT data files), a few flipped: same size, still decodable
    data = max(glob.glob(str(workdir / "checkpoints" / str(newest) / "model" / "ocdbt.process_*"
                             / "d" / "*")), key=os.path.getsize)
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.seek(size // 2)
        flipped = bytes(b ^ 0xFF for b in f.read(4))
        f.seek(size // 2)
        f.write(flipped)
    assert os.path.getsize(data) == size
    proc = _run(str(workdir), teacher)
    assert (f"checkpoint at step {newest} is unreadable (DamagedCheckpoint: the files of its "
            f"'model' item differ from the SHA-256 recorded when it was saved); falling back to "
            f"step {previous}") in proc.stdout
    assert f"resumed from step {previous}" in proc.stdout
    assert os.listdir(workdir / "corrupted_checkpoints")[0].startswith(f"{newest}-")
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert _sha(workdir) == reference
    assert _train_steps(workdir) == list(range(10, STEPS + 1, 10))


def test_a_changed_config_on_rerun_is_refused_leaving_the_workdir_as_it_was(
        teacher, reference_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = tree(workdir)
    proc = subprocess.run([*_args(str(workdir), teacher), "--config.data.mean=(0.5,)"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        ("jaxdistill: error: config.data.mean: changed since this workdir was started ([0.0] -> "
         "[0.5]); use a new --workdir or restore the old value")]
    assert tree(workdir) == before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(teacher, tmp_path):
    config = load_config("digits_kd", "tiny")
    config.teacher.checkpoint = teacher
    config.baseline = False
    config.optimizer.learning_rate = 1e12
    config.checkpoint_every = 1
    config.log_every = 1
    with pytest.raises(FloatingPointError) as e:
        train_and_evaluate(config, str(tmp_path))
    found = re.fullmatch(  # the metrics that are not finite, sorted, then the step
        r"non-finite ((?:[a-z_]+, )*[a-z_]+) at step (\d+); stopped before saving it, so the "
        r"newest checkpoint is the last good state\. Lower the learning rate or check the data "
        r"and the loss weights", str(e.value))
    assert found, str(e.value)
    terms, bad_step = found.group(1).split(", "), int(found.group(2))
    assert terms == sorted(terms) and {"loss", "ce", "kd"} & set(terms), terms
    assert _steps(tmp_path)[-1] == bad_step - 1  # nothing from the bad step was saved
