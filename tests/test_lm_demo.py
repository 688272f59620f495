"""The LM demo end to end, as a user runs it: `experiment.run` on a tiny `configs/lm_kd.py`
(teacher trained here, scratch student, distilled student, table with samples), then the
`jaxdistill.generate` command on its workdir."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, load_config, set_fields

from jaxdistill import experiment
from jaxdistill.generate import generate_text

TINY = {"data.name": "pydoc_topics", "data.max_documents": 40, "data.vocab_size": 512,
        "data.seq_len": 32, "teacher.model": "lm_tiny", "student.model": "lm_tiny",
        "student.kwargs": {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 64},
        "teacher.train.num_steps": 12, "num_steps": 8, "batch_size": 8, "eval_batch_size": 16,
        "log_every": 4, "eval_every": 8, "checkpoint_every": 8, "lm.chunk_size": 8,
        "lm.sample_prompt": "The ", "lm.sample_tokens": 6}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lm_demo"))
    config = set_fields(load_config("lm_kd", "runlocal"), **TINY)
    return workdir, experiment.run(config, workdir)


def test_demo_summary_table_and_samples(demo, capsys):
    workdir, summary = demo
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == summary
    for key in ("student_perplexity", "teacher_perplexity", "scratch_perplexity", "agreement",
                "kl", "tokens_per_second", "student_flops_per_token", "teacher_params"):
        assert key in summary, key
    assert summary["student_params"] < summary["teacher_params"]  # the smaller student
    assert set(summary["samples"]) == {"teacher", "scratch", "student"}
    for name, text in summary["samples"].items():
        assert text.startswith("The "), (name, text)
    assert summary["samples"]["student"] == generate_text(
        workdir, "The ", max_new_tokens=6, seed=0, temperature=0.8, top_k=40)
    table = experiment.comparison_table(summary)
    assert "perplexity" in table.splitlines()[0] and "FLOPs/token" in table.splitlines()[0]
    assert f"{summary['scratch_perplexity']:.3f}" in table
    assert "sample, distilled student:" in table


def _generate(*args):
    return subprocess.run([sys.executable, "-m", "jaxdistill.generate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_generate_command_on_the_demo_workdir(demo):
    workdir, _ = demo
    out = _generate(f"--workdir={workdir}", "--prompt=The ", "--greedy", "--max_new_tokens=5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == generate_text(workdir, "The ", greedy=True,
                                                    max_new_tokens=5)
    teacher = _generate(f"--workdir={workdir}", "--prompt=The ", "--greedy",
                        "--max_new_tokens=5", "--role=teacher")
    assert teacher.returncode == 0 and teacher.stdout.startswith("The "), teacher.stderr[-2000:]


def test_generate_command_refuses_what_is_not_an_lm_run(tmp_path):
    out = _generate(f"--workdir={tmp_path}", "--prompt=def ")
    assert out.returncode == 1
    expected = (f"jaxdistill: error: no {tmp_path}/config.json: --workdir must be the workdir "
                "of a training run")
    assert out.stderr.strip().splitlines() == [expected]
