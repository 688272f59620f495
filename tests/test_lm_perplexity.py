"""benchmarks/lm_perplexity.py end to end in its quick mode (pydoc_topics, lm_tiny models,
seq_len 32, vocab 512, a few steps, 2 seeds): its JSON and Markdown against the runs' own
summary.json files (means and stds recomputed here), a rerun that reuses every finished run,
and a rerun with a changed config that is refused before anything is written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

SEEDS = (0, 1)


def _env():
    """The benchmark as a user runs it: one CPU device (not conftest's 8), the test's data dir."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "").strip()
    return env


def _bench(*args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.lm_perplexity",
                           "--config=configs/lm_kd.py:runlocal", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _read(path):
    with open(path) as f:
        return json.load(f)


def _run_dirs(out):
    dirs = {("teacher", 0): out / "teacher"}
    for s in SEEDS:
        dirs[("scratch", s)] = out / f"seed{s}" / "scratch"
        dirs[("distilled", s)] = out / f"seed{s}" / "distilled"
    return dirs


def _state(out):
    """Every run directory's files (checkpoint steps included) with their mtimes."""
    state = {}
    for d in _run_dirs(out).values():
        for root, _, files in os.walk(d):
            for name in files:
                path = os.path.join(root, name)
                state[os.path.relpath(path, out)] = os.stat(path).st_mtime_ns
    return state


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_ppl")
    proc = _bench("--quick", f"--out={out}")
    return out, _read(out / "lm_perplexity.json"), proc.stdout


def test_json_matches_the_runs_summaries(quick):
    out, result, _ = quick
    dirs = _run_dirs(out)
    summaries = {k: _read(d / "summary.json") for k, d in dirs.items()}
    assert result["benchmark"] == "lm_perplexity" and result["flags"]["quick"]
    assert result["config"]["data"]["name"] == "pydoc_topics"
    data = result["config"]["data"]
    assert (data["seq_len"], data["vocab_size"]) == (32, 512)
    assert [(r["name"], r["seed"]) for r in result["runs"]] == list(dirs)
    for rec in result["runs"]:
        key = (rec["name"], rec["seed"])
        assert rec["workdir"] == str(dirs[key])
        assert rec["summary"] == summaries[key], key
        assert not rec["reused"] and rec["timing"]["wall_s"] > 0, key
        assert _read(dirs[key] / "benchmark_timing.json") == rec["timing"]
        # every run trained to its config's num_steps, with the config it was planned with
        cfg = _read(dirs[key] / "config.json")
        assert summaries[key]["steps"] == cfg["num_steps"] == rec["steps"]
        assert cfg["seed"] == rec["seed"]
    teacher_cfg = _read(dirs[("teacher", 0)] / "config.json")
    assert teacher_cfg["student"]["model"] == "lm_tiny" and teacher_cfg["teacher"]["model"] == ""
    for s in SEEDS:
        scratch_cfg = _read(dirs[("scratch", s)] / "config.json")
        distilled_cfg = _read(dirs[("distilled", s)] / "config.json")
        assert scratch_cfg["teacher"]["model"] == "" and set(scratch_cfg["objective"]) == {"ce"}
        assert distilled_cfg["teacher"]["checkpoint"] == str(dirs[("teacher", 0)])
        assert set(distilled_cfg["objective"]) == {"ce", "kd"}

    assert [r["seed"] for r in result["per_seed"]] == list(SEEDS)
    for row in result["per_seed"]:
        s, d = summaries[("scratch", row["seed"])], summaries[("distilled", row["seed"])]
        assert row["scratch_perplexity"] == s["student_perplexity"]
        assert row["distilled_perplexity"] == d["student_perplexity"]
        assert row["gain"] == pytest.approx(1 - d["student_perplexity"] / s["student_perplexity"])
        assert row["distilled_beats_scratch"] == (d["student_perplexity"]
                                                  < s["student_perplexity"])
        assert row["agreement"] == d["agreement"] and row["kl"] == d["kl"]
        assert row["scratch_tokens_per_second"] == s["tokens_per_second"]
        assert row["distilled_tokens_per_second"] == d["tokens_per_second"]
        assert row["teacher_perplexity"] == d["teacher_perplexity"]
        assert row["merged_summary"]["scratch_perplexity"] == s["student_perplexity"]
        assert "agreement" not in s  # the scratch run has no teacher

    agg = result["aggregate"]
    scratch = np.array([summaries[("scratch", s)]["student_perplexity"] for s in SEEDS])
    distilled = np.array([summaries[("distilled", s)]["student_perplexity"] for s in SEEDS])
    gain = 1 - distilled / scratch
    assert agg["n"] == len(SEEDS)
    for name, v in (("scratch_perplexity", scratch), ("distilled_perplexity", distilled),
                    ("gain", gain)):
        assert agg[f"{name}_mean"] == pytest.approx(np.mean(v), rel=1e-12), name
        assert agg[f"{name}_std"] == pytest.approx(np.std(v, ddof=1), rel=1e-9), name
    assert agg["wins"] == int(np.sum(distilled < scratch))
    teacher = summaries[("teacher", 0)]
    assert agg["teacher_perplexity"] == teacher["student_perplexity"]
    for s in SEEDS:  # the one teacher, evaluated again in each distilled run
        assert summaries[("distilled", s)]["teacher_perplexity"] == pytest.approx(
            teacher["student_perplexity"], rel=1e-5)
    demo = agg["seed0_demo"]
    walls = [r["timing"]["wall_s"] for r in result["runs"] if r["seed"] == 0]
    assert demo["wall_s"] == pytest.approx(sum(walls))


def test_markdown_tables(quick):
    out, result, stdout = quick
    with open(out / "lm_perplexity.md") as f:
        md = f.read()
    assert stdout == md + "\n"  # printed at the end
    lines = md.splitlines()
    assert lines[2] == f"`{result['command']}`"
    header = next(line for line in lines if line.startswith("| seed | scratch ppl"))
    assert "agreement" in header and "tok/s" in header
    for row in result["per_seed"]:
        start = f"| {row['seed']} | {row['scratch_perplexity']:.3f} |"
        line = next(x for x in lines if x.startswith(start))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{row['distilled_perplexity']:.3f}"
        assert cells[3] == f"{100 * row['gain']:+.2f}%"
        assert cells[6] == f"{row['agreement']:.4f}"
    agg = result["aggregate"]
    mean_line = next(x for x in lines if x.startswith(f"| mean ± std ({len(SEEDS)} seeds)"))
    cells = [c.strip() for c in mean_line.strip("|").split("|")]
    assert cells[1] == (f"{agg['scratch_perplexity_mean']:.3f} ± "
                        f"{agg['scratch_perplexity_std']:.3f}")
    assert cells[2] == (f"{agg['distilled_perplexity_mean']:.3f} ± "
                        f"{agg['distilled_perplexity_std']:.3f}")
    assert cells[3] == f"{100 * agg['gain_mean']:+.2f} ± {100 * agg['gain_std']:.2f}%"
    assert f"perplexity {agg['teacher_perplexity']:.3f}" in md
    assert f"beats scratch on **{agg['wins']} of {len(SEEDS)}** seeds" in md
    assert "Seed 0's teacher + scratch + distilled" in md


def test_rerun_reuses_every_finished_run(quick):
    out, first, _ = quick
    before = _state(out)
    proc = _bench("--quick", f"--out={out}")
    assert _state(out) == before  # no file of any run rewritten, no new checkpoint step
    result = _read(out / "lm_perplexity.json")
    assert all(r["reused"] for r in result["runs"])
    assert [r["timing"] for r in result["runs"]] == [r["timing"] for r in first["runs"]]
    assert result["per_seed"] == first["per_seed"]
    assert result["aggregate"] == first["aggregate"]
    assert proc.stderr.count(": reused") == len(first["runs"])


def test_a_changed_config_is_refused_before_anything_runs(quick):
    out, _, _ = quick
    before = _state(out)
    with open(out / "lm_perplexity.json") as f:
        result_before = f.read()
    proc = _bench("--quick", f"--out={out}", "--config.objective.kd.temperature=2.0",
                  check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [(
        f"benchmarks.lm_perplexity: error: {out / 'seed0' / 'distilled'} holds a different run: "
        "config.objective.kd.temperature: changed since this workdir was started (1.0 -> 2.0); "
        "use a new --workdir or restore the old value")]
    assert _state(out) == before
    with open(out / "lm_perplexity.json") as f:
        assert f.read() == result_before
