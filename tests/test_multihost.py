"""Multi-process runs on this machine through launch/local.py: 2 processes x 2 host CPU
devices against 1 process x 4, process-0-only logging, checkpoints from every process
and resume, a dead peer, and the flags of `jaxdistill.distributed`.

Bit-for-bit reference. The 1-process reference also runs through the launcher, i.e. with
`jax.distributed` initialised and the gloo CPU collectives that every multi-process CPU
run uses. A plain 1-process run (no `jax.distributed`) reduces across its devices with
XLA's in-process collectives, which add the devices' partial sums in device order
((d0 + d1) + d2) + d3, while gloo's ring all-reduce adds each quarter of a buffer in a
rotated order (e.g. ((d3 + d2) + d1) + d0 for the first quarter). Float addition is not
associative, so the two differ in the last bits of the gradients from step 1 on. The
process split itself changes nothing: 1 x 4 and 2 x 2 over gloo agree exactly, which is
what `test_two_processes_match_one_bit_for_bit` pins down.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, device_env
from refusals import refusal

from jaxdistill import distributed

LAUNCHER = os.path.join(ROOT, "launch", "local.py")
TINY = ["--config=configs/digits_kd.py:tiny", "--config.baseline=False"]
VOLATILE = {"time", "examples_per_second", "tokens_per_second"}  # wall-clock fields of a metrics record


# A decoder LM pair on a (data 2, model 2) mesh: the student sharded by logical names
# (FSDP + tensor parallel), the teacher tensor-parallel, the logit terms chunked.
LM_TINY = ["--config=configs/lm_kd.py:runlocal", "--config.baseline=False",
           "--config.data.name=pydoc_topics", "--config.data.max_documents=40",
           "--config.data.vocab_size=512", "--config.data.seq_len=32",
           "--config.teacher.model=lm_tiny", "--config.student.model=lm_tiny",
           "--config.teacher.train.num_steps=4", "--config.num_steps=4",
           "--config.batch_size=8", "--config.eval_batch_size=8", "--config.log_every=1",
           "--config.eval_every=2", "--config.checkpoint_every=2", "--config.lm.chunk_size=8",
           "--config.lm.sample_tokens=0", "--config.mesh.shape=(2,2)",
           "--config.mesh.student_rule=fsdp_tensor", "--config.mesh.teacher_rule=tensor"]


def _launch(processes: int, devices: int, workdir, *extra, run=TINY) -> str:
    proc = subprocess.run(
        [sys.executable, LAUNCHER, f"--num_processes={processes}",
         f"--devices_per_process={devices}", "--", *run, f"--workdir={workdir}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in f]


def _summary(workdir) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def one_by_four(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_by_four")
    return workdir, _launch(1, 4, workdir)


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_by_two")
    return workdir, _launch(2, 2, workdir)


def test_two_processes_match_one_bit_for_bit(one_by_four, two_by_two):
    """Teacher stage and distilled student: every logged value and the final parameters."""
    (ref, _), (ours, _) = one_by_four, two_by_two
    for stage in ("teacher", ""):
        a, b = _records(os.path.join(ref, stage)), _records(os.path.join(ours, stage))
        assert a == b, stage or "student"
        assert any(r["split"] == "eval" for r in a)
        sa, sb = _summary(os.path.join(ref, stage)), _summary(os.path.join(ours, stage))
        assert sb["student_params_sha256"] == sa["student_params_sha256"], stage or "student"
        assert sb["student_accuracy"] == sa["student_accuracy"]
    assert _summary(ours)["agreement"] == _summary(ref)["agreement"]


def test_lm_two_processes_match_one_bit_for_bit(tmp_path):
    """The causal-LM task over 2 processes x 2 devices: the distilled student's logged
    values and final parameters equal 1 process x 4's, both from the teacher the 1 x 4 run
    trained (a teacher stage over two processes is pinned by the test above)."""
    ref, ours = tmp_path / "one_by_four", tmp_path / "two_by_two"
    _launch(1, 4, ref, run=LM_TINY)
    _launch(2, 2, ours, f"--config.teacher.checkpoint={ref / 'teacher'}", run=LM_TINY)
    assert not os.path.exists(ours / "teacher")
    a, b = _records(ref), _records(ours)
    assert a == b and any(r["split"] == "eval" for r in a)
    sa, sb = _summary(ref), _summary(ours)
    assert sb["student_params_sha256"] == sa["student_params_sha256"]
    assert sb["student_perplexity"] == sa["student_perplexity"]
    assert sb["agreement"] == sa["agreement"]


def test_only_process_zero_logs_and_writes(two_by_two):
    workdir, out = two_by_two
    lines = out.splitlines()
    progress = [ln for ln in lines if re.search(r"\bstep \d+/\d+ \|", ln)]
    train = [r for stage in ("teacher", "") for r in _records(os.path.join(workdir, stage))
             if r["split"] == "train"]
    assert len(progress) == len(train)
    assert all(ln.startswith("[0] step ") for ln in progress), progress
    assert any(ln.startswith("[1] ") for ln in lines)  # process 1 ran, prefixed
    assert sum("distilled student (mlp)" in ln for ln in lines) == 1
    for stage, steps in (("teacher", 20), ("", 12)):
        records = _records(os.path.join(workdir, stage))
        keys = [(r["step"], r["split"]) for r in records]
        assert len(keys) == len(set(keys)), f"duplicated records in {stage or 'student'}"
        assert max(r["step"] for r in records) == steps
        assert len(os.listdir(os.path.join(workdir, stage, "tensorboard"))) == 1


def test_checkpoints_from_every_process_and_resume(two_by_two, tmp_path):
    """Both processes write their share of each Orbax checkpoint; a 2-process run that
    stopped after its step-6 checkpoint resumes to the same bits as the straight run."""
    straight, _ = two_by_two
    checkpoints = os.path.join(straight, "checkpoints")
    assert sorted(os.listdir(checkpoints), key=int) == ["6", "12"]
    for step in ("6", "12"):
        for item in ("model", "train"):
            for process in (0, 1):
                assert os.path.isdir(os.path.join(checkpoints, step, item,
                                                  f"ocdbt.process_{process}"))
    # The run as it stood after step 6: its last checkpoint and log lines removed.
    workdir = tmp_path / "resumed"
    shutil.copytree(straight, workdir)
    shutil.rmtree(workdir / "checkpoints" / "12")
    os.remove(workdir / "summary.json")
    with open(workdir / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line)["step"] <= 6]
    with open(workdir / "metrics.jsonl", "w") as f:
        f.writelines(kept)
    out = _launch(2, 2, workdir)
    assert "[0] resumed from step 6" in out
    assert _records(workdir) == _records(straight)
    assert (_summary(workdir)["student_params_sha256"]
            == _summary(straight)["student_params_sha256"])


def _local_launcher():
    spec = importlib.util.spec_from_file_location("launch_local", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start_pair(tmp_path, make_cmd, devices):
    """Starts processes 0 and 1 of `make_cmd(process_id)`, output to log files."""
    env = device_env(devices, JAX_PLATFORMS="cpu")
    logs = [open(tmp_path / f"process_{i}.log", "w+") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen(make_cmd(i), cwd=ROOT, env=env, stdout=logs[i],
                              stderr=subprocess.STDOUT) for i in range(2)]
    return procs, logs


def _wait_until(condition, procs, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in procs), f"a process ended before {what}"
        time.sleep(0.2)


def _finish(procs, logs, timeout=60):
    """Waits for every process (killing stragglers after `timeout`); returns the exit
    codes (None: killed here) and the logs."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return codes, texts


def _dead_peer_error(log: str) -> bool:
    """How a process learns that its peer died: JAX's coordination service ends it (no
    heartbeats from the peer, or the coordinator gone), or the collective it waits in
    fails ("Connection closed/reset by peer") and `fail_fast` ends it."""
    return (any(m in log for m in ("another task died", "stopped sending heartbeats",
                                   "leader task was preempted/died"))
            or re.search(r"Gloo [\w-]+ failed: .*by peer", log) is not None)


def test_a_dead_process_stops_the_other_mid_training(tmp_path):
    """SIGKILL process 1 while the CLI trains: process 0, waiting for it in a collective,
    exits non-zero, saying why, about --heartbeat_timeout later."""
    port = _local_launcher().free_port()
    procs, logs = _start_pair(tmp_path, lambda i: [
        sys.executable, "-u", "-m", "jaxdistill.main", *TINY, f"--workdir={tmp_path / 'run'}",
        "--config.teacher.train.num_steps=100000", "--config.log_every=1",
        "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout=10"], devices=2)
    metrics = tmp_path / "run" / "teacher" / "metrics.jsonl"
    killed = None
    try:
        _wait_until(lambda: metrics.exists() and metrics.stat().st_size, procs, "training")
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        codes, texts = _finish(procs, logs)
    assert codes[0] not in (0, None), texts[0][-3000:]
    assert time.monotonic() - killed < 30
    assert _dead_peer_error(texts[0]), texts[0][-3000:]


PAIR = """
import sys
from jaxdistill import distributed
distributed.initialize(distributed.Settings(
    mode="explicit", coordinator_address=sys.argv[1], num_processes=2,
    process_id=int(sys.argv[2]), heartbeat_timeout=5))
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones((1, 4), np.float32))
with distributed.fail_fast():
    float(total(x))
    print("ready", flush=True)
    if jax.process_index() == 1 and sys.argv[3] == "raise":
        raise OSError("disk full on process 1")
    while True:  # a collective with the peer, again and again
        float(total(x))
"""


def _script_pair(tmp_path, behaviour):
    script = tmp_path / "pair.py"
    script.write_text(PAIR)
    address = f"127.0.0.1:{_local_launcher().free_port()}"
    return _start_pair(tmp_path, lambda i: [sys.executable, "-u", str(script), address, str(i),
                                            behaviour], devices=1)


def test_a_dead_coordinator_stops_the_other_at_once(tmp_path):
    procs, logs = _script_pair(tmp_path, "loop")
    killed = None
    try:
        _wait_until(lambda: "ready" in (tmp_path / "process_1.log").read_text(), procs,
                    "the first collective")
        procs[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        codes, texts = _finish(procs, logs)
    assert codes[1] not in (0, None), texts[1][-3000:]
    assert time.monotonic() - killed < 30
    assert _dead_peer_error(texts[1]), texts[1][-3000:]


def test_an_exception_in_one_process_ends_the_run_quickly(tmp_path):
    """`fail_fast`: the failing process leaves at once instead of waiting in JAX's shutdown
    barrier (up to --shutdown_timeout) for a peer that waits for it in a collective."""
    start = time.monotonic()
    procs, logs = _script_pair(tmp_path, "raise")
    codes, texts = _finish(procs, logs)
    assert codes[1] == 1, texts[1][-2000:]
    assert "jaxdistill: error: process 1 of 2 failed: OSError: disk full" in texts[1]
    assert codes[0] not in (0, None), texts[0][-2000:]
    assert _dead_peer_error(texts[0]), texts[0][-2000:]
    assert time.monotonic() - start < 40


def test_launcher_stops_the_rest_when_one_fails(tmp_path):
    """No JAX here: a stand-in for python whose process 1 fails at once."""
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --process_id=1) '
                    'echo "process 1 fails"; exit 3;; esac; done\necho waiting\nexec sleep 60\n')
    fake.chmod(0o755)
    log = tmp_path / "out.txt"
    start = time.monotonic()
    with open(log, "w") as out:
        code = _local_launcher().launch(3, 1, ["--workdir=x"], python=str(fake), grace=2,
                                        out=out)
    assert code == 3
    assert time.monotonic() - start < 15
    text = log.read_text()
    assert "[1] process 1 fails" in text and "[0] waiting" in text
    assert "process 1 exited with status 3" in text


def test_launcher_sets_device_count_and_keeps_other_xla_flags():
    env = _local_launcher().child_env(
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1"}, 2, "cpu")
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_foo=1",
                                        "--xla_force_host_platform_device_count=2"]
    assert env["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("settings, message", [
    ({"num_processes": 2}, ("--num_processes given but --distributed=off; pass "
                            "--distributed=explicit (or auto on a TPU pod or under SLURM)")),
    ({"mode": "explicit", "num_processes": 2},
     "--distributed=explicit needs --coordinator_address, --process_id"),
    ({"mode": "explicit", "coordinator_address": "nohost", "num_processes": 2,
      "process_id": 0}, "--coordinator_address='nohost': expected host:port, e.g. 10.0.0.2:1234"),
    ({"mode": "explicit", "coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
     "--process_id=2 must be below --num_processes=2"),
    ({"mode": "auto", "heartbeat_timeout": 0}, "--heartbeat_timeout=0: must be > 0 seconds"),
    ({"mode": "cluster"}, "--distributed='cluster': expected one of ('off', 'auto', 'explicit')"),
])
def test_bad_distributed_flags_are_named(settings, message):
    assert refusal(lambda: distributed.initialize(distributed.Settings(**settings))) == message


def test_off_is_a_no_op_and_device_ids_parse():
    assert distributed.initialize(distributed.Settings()) is False
    assert distributed.parse_device_ids("0,1,3") == (0, 1, 3)
    assert distributed.parse_device_ids("") is None
    assert refusal(lambda: distributed.parse_device_ids("a")) == (
        "--local_device_ids='a': expected comma-separated integers, e.g. 0,1,2,3")


def test_auto_without_a_cluster_fails_clearly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
    proc = subprocess.run([sys.executable, "-m", "jaxdistill.main", *TINY,
                           f"--workdir={tmp_path}", "--distributed=auto"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()  # the one line; its end is JAX's own reason
    assert re.fullmatch(re.escape(
        "jaxdistill: error: --distributed=auto found no cluster to join (JAX detects Cloud TPU "
        "VM pods, SLURM job steps started with srun, Open MPI and GKE); run under one of those "
        "or use --distributed=explicit with --coordinator_address, --num_processes and "
        "--process_id ") + r"\(.+\)", line), line
    assert not os.listdir(tmp_path)


def test_url_workdir_is_refused_before_anything_runs():
    proc = subprocess.run([sys.executable, "-m", "jaxdistill.main", *TINY,
                           "--workdir=gs://bucket/run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [(
        "jaxdistill: error: --workdir=gs://bucket/run: URLs are not supported yet; use a "
        "directory every process sees at the same path (NFS, Filestore, a gcsfuse mount)")]


@pytest.mark.parametrize("command, out_flag", [("jaxdistill.main", "--workdir"),
                                               ("jaxdistill.teacher_store", "--store")])
def test_every_command_takes_the_same_distributed_flags(command, out_flag, tmp_path):
    """main and teacher_store both define `distributed.define_flags()`'s flags and hand them
    to the same Settings: a flag of the set given without --distributed is refused by name."""
    proc = subprocess.run([sys.executable, "-m", command, *TINY, f"{out_flag}={tmp_path}",
                           "--local_device_ids=0", "--heartbeat_timeout=5", "--helpfull"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    listed = re.search(r"^jaxdistill\.distributed:\n((?:  .*\n)+)", proc.stdout, re.MULTILINE)
    assert listed, proc.stdout[-2000:]
    assert set(re.findall(r"^  --(\w+):", listed.group(1), re.MULTILINE)) == {
        "distributed", "coordinator_address", "num_processes", "process_id",
        "local_device_ids", "heartbeat_timeout", "init_timeout", "shutdown_timeout"}
    proc = subprocess.run([sys.executable, "-m", command, *TINY, f"{out_flag}={tmp_path}",
                           "--local_device_ids=0", "--heartbeat_timeout=5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--local_device_ids given but --distributed=off; pass --distributed=explicit (or auto "
        "on a TPU pod or under SLURM)")
    assert not os.listdir(tmp_path)
