"""The throughput benchmark end to end in a tiny mode (mlp pair, small batch, a few timed
steps, on the 8 host CPU devices of conftest), and its JSON checked against hand-derived
FLOP counts; the LM pair the same way at a tiny vocabulary and length, both loss forms."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

BATCH = 32
# Hinton et al. (2015) MNIST nets: 784-800-800-10 student, 784-1200-1200-10 teacher.
STUDENT_PARAMS = 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
TEACHER_PARAMS = 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
FIELDS = ("pair", "mode", "batch_size", "examples_per_second", "flops_per_step",
          "fraction_of_peak", "step_time_s", "step_time_p10_s", "step_time_p90_s", "compile_s",
          "memory_peak_bytes", "device_peak_bytes_in_use", "achieved_flops_per_second",
          "peak_flops_per_second")


def _bench(*args):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.throughput", *args],
                          check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput")
    proc = _bench("--pairs=mlp", f"--batch_sizes={BATCH}", "--warmup=1", "--steps=2",
                  "--repeats=2", "--peak_size=128", "--store_top_k=3", f"--out={out}")
    with open(out / "throughput.json") as f:
        return json.load(f), proc.stdout


def test_records_have_every_mode_and_field(tiny):
    records, _ = tiny
    assert [r["mode"] for r in records] == ["student", "teacher_forward", "kd_online", "feature",
                                            "kd_offline"]
    for r in records:
        for field in FIELDS:
            assert field in r, (r["mode"], field)
        assert r["pair"] == "mlp" and r["batch_size"] == BATCH and r["devices"] == 8
        assert r["examples_per_second"] > 0 and r["compile_s"] > 0
        assert 0 < r["step_time_p10_s"] <= r["step_time_s"] <= r["step_time_p90_s"]
        assert r["examples_per_second"] == pytest.approx(BATCH / r["step_time_s"])
        assert r["achieved_flops_per_second"] == pytest.approx(
            r["flops_per_step"] / r["step_time_s"])
        assert r["fraction_of_peak"] == pytest.approx(
            r["achieved_flops_per_second"] / r["peak_flops_per_second"])
        assert r["memory_peak_bytes"] > 0
    assert "kd_time_ratio" in records[2] and "kd_time_ratio" not in records[0]
    assert records[4]["store_top_k"] == 3 and "store_top_k" not in records[2]


def test_flops_match_hand_derived_counts(tiny):
    by_mode = {r["mode"]: r for r in tiny[0]}
    for r in tiny[0]:  # the CPU backend counts everything: XLA's count, above the matmuls'
        assert r["flops_source"] == "compiled"
        assert r["flops_per_step"] == r["flops_per_step_compiled_per_device"] * r["devices"]
        assert r["flops_per_step_dot_conv"] <= r["flops_per_step"]
    train = 6 * STUDENT_PARAMS * BATCH   # forward 2PB, backward 4PB
    forward = 2 * TEACHER_PARAMS * BATCH
    assert 0.5 * train < by_mode["student"]["flops_per_step"] < 2 * train
    assert 0.8 * forward < by_mode["teacher_forward"]["flops_per_step"] < 1.25 * forward
    kd = by_mode["kd_online"]["flops_per_step"]
    assert kd == pytest.approx(by_mode["student"]["flops_per_step"]
                               + by_mode["teacher_forward"]["flops_per_step"], rel=0.05)
    # the hint adapter (800 -> 1200 linear, forward and backward) costs extra
    assert by_mode["feature"]["flops_per_step"] > kd + 4 * 800 * 1200 * BATCH
    # from a store: the student's step plus the KD loss, no teacher forward
    assert by_mode["kd_offline"]["flops_per_step"] == pytest.approx(
        by_mode["student"]["flops_per_step"], rel=0.02)


def test_kd_ratios(tiny):
    by_mode = {r["mode"]: r for r in tiny[0]}
    kd = by_mode["kd_online"]
    assert kd["kd_ideal_ratio"] == pytest.approx(
        1 + by_mode["teacher_forward"]["flops_per_step"] / by_mode["student"]["flops_per_step"],
        rel=1e-12)
    assert 1.5 < kd["kd_ideal_ratio"] < 2.5
    assert kd["kd_time_ratio"] > 0
    offline = by_mode["kd_offline"]
    assert offline["kd_ideal_ratio"] == 1.0 and offline["kd_time_ratio"] > 0


def test_table_is_printed(tiny):
    _, stdout = tiny
    assert "kd_online" in stdout and "GFLOP/step" in stdout
    assert "kd_offline" in stdout and "peak:" in stdout


def test_offline_step_from_full_store_fields_equals_the_online_step(monkeypatch):
    """kd_offline feeds the step what a full-k store holds of the same teacher on the same
    images, so its first step's losses equal kd_online's (KD from a full-k store is exact)."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import pairs, throughput
    bench = throughput.PairBench(pairs.PAIRS["mlp"], 16, "float32", 0, {}, store_top_k=0)
    online, offline = throughput.kd_online(bench), throughput.kd_offline(bench)
    assert offline.compiled.args_info[0][1] is None  # no teacher variables go into the step
    _, m_online = online.step(online.carry)
    _, m_offline = offline.step(offline.carry)
    assert set(m_online) == set(m_offline) and "kd" in m_online
    # kd is T^2 = 400 times a KL of near-uniform distributions: the float32 rounding of the
    # log-probabilities (~2e-7 each) shows as ~1e-5 absolute; another teacher or batch
    # changes kd by ~0.06
    for name in m_online:
        np.testing.assert_allclose(np.asarray(m_offline[name]), np.asarray(m_online[name]),
                                   rtol=1e-5, atol=5e-5, err_msg=name)
    assert float(m_online["kd"]) > 0.01


def test_bad_arguments_fail_clearly(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import throughput
    with pytest.raises(ValueError) as e:
        throughput.run(["nope"], ["student"], [8])
    assert str(e.value) == (
        "--pairs: unknown pair 'nope'; choose from ['mlp', 'resnet', 'vit', 'lm', 'lm_quick']")
    with pytest.raises(ValueError) as e:
        throughput.run(["mlp"], ["kd_onlin"], [8])
    assert str(e.value) == (
        "--modes: unknown mode 'kd_onlin'; choose from ['student', 'teacher_forward', "
        "'kd_online', 'feature', 'kd_offline', 'population']")
    with pytest.raises(ValueError) as e:
        throughput.run(["mlp"], ["student"], [0])
    assert str(e.value) == "--batch_sizes must be positive, got [0]"


def test_recount_matches_the_live_count_and_repairs_a_short_xla_count(tiny, monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.recount_flops import recount
    records, _ = tiny
    same = recount(records)
    for before, after in zip(records, same):  # counted from abstract programs: the same FLOPs
        assert after["flops_per_step_dot_conv"] == before["flops_per_step_dot_conv"]
        assert after["flops_per_step"] == before["flops_per_step"]
        assert after.get("kd_ideal_ratio") == pytest.approx(before.get("kd_ideal_ratio"))
    # a backend that counted a tenth of every step (XLA on GPU): the matmul count takes over
    short = [{**r, "flops_per_step_compiled_per_device": r["flops_per_step_compiled_per_device"]
              / 10} for r in records]
    fixed = {r["mode"]: r for r in recount(short)}
    for r in fixed.values():
        assert r["flops_source"] == "dot_conv"
        assert r["flops_per_step"] == r["flops_per_step_dot_conv"]
        assert r["fraction_of_peak"] == pytest.approx(
            r["flops_per_step"] / r["step_time_s"] / r["peak_flops_per_second"])
    assert fixed["kd_online"]["kd_ideal_ratio"] == pytest.approx(
        1 + fixed["teacher_forward"]["flops_per_step"] / fixed["student"]["flops_per_step"])
    assert fixed["kd_offline"]["kd_ideal_ratio"] == 1.0


# ----------------------------------------------------------------------------- LM pair

# `--pairs=lm --quick` (lm_student -> lm_tiny), reshaped tiny: both loss forms in seconds
LM_BATCH, LM_LEN, LM_VOCAB, LM_CHUNK = 8, 32, 2048, 8
LM_TOKENS = LM_BATCH * LM_LEN
LM_FIELDS = FIELDS + ("loss_impl", "tokens_per_second", "tokens_per_step", "flops_per_token",
                      "seq_len", "vocab_size", "chunk_size", "memory_temp_bytes")
LM_MODES = ["student", "teacher_forward", "kd_online"]
STUDENT_DIM, TEACHER_DIM = 64, 128  # lm_tiny, lm_student


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput_lm")
    proc = _bench("--pairs=lm", "--quick", f"--vocab_size={LM_VOCAB}", f"--seq_len={LM_LEN}",
                  f"--chunk_size={LM_CHUNK}", f"--batch_sizes={LM_BATCH}", "--warmup=1",
                  f"--modes={','.join(LM_MODES)}",
                  "--steps=1", "--repeats=2", "--peak_size=128", f"--out={out}")
    with open(out / "throughput.json") as f:
        records = json.load(f)
    return {(r["mode"], r["loss_impl"]): r for r in records}, records, proc.stdout


def test_lm_records_have_both_loss_forms_and_token_fields(tiny_lm):
    by_key, records, _ = tiny_lm
    assert [(r["mode"], r["loss_impl"]) for r in records] == (
        [(m, "chunked") for m in LM_MODES] + [(m, "naive") for m in LM_MODES])
    for r in records:
        for field in LM_FIELDS:
            assert field in r, (r["mode"], r["loss_impl"], field)
        assert r["pair"] == "lm_quick" and r["unit"] == "tokens" and r["devices"] == 8
        assert (r["batch_size"], r["seq_len"], r["vocab_size"]) == (LM_BATCH, LM_LEN, LM_VOCAB)
        assert r["chunk_size"] == (LM_CHUNK if r["loss_impl"] == "chunked" else 0)
        assert r["tokens_per_step"] == LM_TOKENS
        assert r["tokens_per_second"] == pytest.approx(LM_TOKENS / r["step_time_s"])
        assert r["flops_per_token"] == pytest.approx(r["flops_per_step"] / LM_TOKENS)
        assert r["fraction_of_peak"] == pytest.approx(
            r["flops_per_step"] / r["step_time_s"] / r["peak_flops_per_second"])
        # the compiled peak holds the program's temporaries (CPU reports arguments + outputs)
        assert r["memory_peak_bytes"] >= r["memory_temp_bytes"] > 0
    for impl in ("chunked", "naive"):
        kd, st, tf = (by_key[(m, impl)] for m in ("kd_online", "student", "teacher_forward"))
        assert kd["kd_time_ratio"] > 0 and "kd_time_ratio" not in st
        assert kd["kd_ideal_ratio"] == pytest.approx(
            1 + tf["flops_per_step"] / st["flops_per_step"], rel=1e-12)
    for mode in LM_MODES:
        chunked, naive = by_key[(mode, "chunked")], by_key[(mode, "naive")]
        assert chunked["memory_peak_ratio_vs_naive"] == pytest.approx(
            chunked["memory_peak_bytes"] / naive["memory_peak_bytes"])
        assert "memory_peak_ratio_vs_naive" not in naive


def test_lm_chunked_and_naive_kd_steps_compute_the_same_first_loss(tiny_lm):
    """Same initial student, teacher and batch: the first step's objective and terms agree."""
    by_key = tiny_lm[0]
    for mode in ("student", "kd_online"):
        chunked, naive = by_key[(mode, "chunked")], by_key[(mode, "naive")]
        assert chunked["first_step_loss"] == pytest.approx(naive["first_step_loss"], rel=1e-5)
        for name in ("ce", "kd", "accuracy", "agreement"):
            if name in naive["first_step_metrics"]:
                assert chunked["first_step_metrics"][name] == pytest.approx(
                    naive["first_step_metrics"][name], rel=1e-5, abs=1e-6), (mode, name)
    kd = by_key[("kd_online", "naive")]["first_step_metrics"]
    assert kd["kd"] > 0 and kd["ce"] > 0.5 * np.log(LM_VOCAB)  # random models: near log V


def test_lm_chunked_form_holds_less_and_recomputes_the_heads(tiny_lm):
    by_key = tiny_lm[0]
    kd_chunked, kd_naive = by_key[("kd_online", "chunked")], by_key[("kd_online", "naive")]
    assert kd_chunked["memory_temp_bytes"] < kd_naive["memory_temp_bytes"]
    # the backward pass re-runs each chunk's heads (jax.checkpoint): one more head forward,
    # 2 * dim * V FLOPs per token, for the student and for the teacher (counted on the jaxpr)
    head = {m: 2 * LM_TOKENS * d * LM_VOCAB for m, d in (("s", STUDENT_DIM), ("t", TEACHER_DIM))}
    extra = {m: by_key[(m, "chunked")]["flops_per_step_dot_conv"]
             - by_key[(m, "naive")]["flops_per_step_dot_conv"] for m in LM_MODES}
    assert extra["student"] == head["s"]
    assert extra["teacher_forward"] == 0
    assert extra["kd_online"] == head["s"] + head["t"]


def test_lm_table_shows_tokens_and_both_memory_figures(tiny_lm):
    stdout = tiny_lm[2]
    assert "tok/s" in stdout and "XLA MiB" in stdout and "dev MiB" in stdout
    assert "chunked" in stdout and "naive" in stdout
    assert f"memory: lm_quick kd_online batch {LM_BATCH} x {LM_LEN}, V {LM_VOCAB}" in stdout


def test_batch_plan_and_lm_flags(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import pairs, throughput
    chosen = [pairs.PAIRS["resnet"], pairs.PAIRS["lm"]]
    defaults = {"resnet": (128, 256), "lm": (8,)}
    assert throughput.batch_plan(chosen, ["2048", "lm:8"], defaults) == {
        "resnet": [2048], "lm": [8]}
    assert throughput.batch_plan(chosen, [], defaults) == {"resnet": [128, 256], "lm": [8]}
    assert throughput.batch_plan(chosen, ["vit:64", "lm:4"], defaults) == {  # vit not measured
        "resnet": [128, 256], "lm": [4]}
    quick, sizes = pairs.quick_pair("lm")
    assert (quick.name, sizes, quick.num_classes, quick.seq_len) == ("lm_quick", (2,), 32768, 1024)
    with pytest.raises(ValueError) as e:
        throughput.batch_plan(chosen, ["nope:8"], defaults)
    assert str(e.value) == (
        "--batch_sizes: 'nope:8' names an unknown pair 'nope'; choose from ['mlp', 'resnet', "
        "'vit', 'lm', 'lm_quick']")
    with pytest.raises(ValueError) as e:
        throughput.batch_plan(chosen, ["lm:x"], defaults)
    assert str(e.value) == "--batch_sizes: 'lm:x' is not N or PAIR:N"
    with pytest.raises(ValueError) as e:
        throughput.run(["mlp"], ["student"], [8], vocab_size=100)
    assert str(e.value) == (
        "--vocab_size / --seq_len / --chunk_size shape LM pairs; none of ['mlp'] is one")
    with pytest.raises(ValueError) as e:
        throughput.run(["lm"], ["student"], [8], loss_impls=["fused"])
    assert str(e.value) == "--loss_impls: ['fused']; choose from ['chunked', 'naive']"
    with pytest.raises(ValueError) as e:  # the package's own check
        throughput.PairBench(pairs.with_shape(pairs.PAIRS["lm_quick"], chunk_size=100), 8,
                             "float32", 0, {}, loss_impl="chunked").setup("student")
    assert str(e.value) == (
        "config.lm.chunk_size (100) must be 0 (no chunking) or divide the sequence length "
        "1024; e.g. 128")
    with pytest.raises(ValueError) as e:
        throughput.PairBench(pairs.PAIRS["mlp"], 8, "float32", 0, {}, loss_impl="naive")
    assert str(e.value) == "pair 'mlp': loss_impl 'naive' is not one of (None,)"
