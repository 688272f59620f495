"""benchmarks/ablation.py: its plan, its refusals, and one quick run whose population member
that is the KD recipe (fkl at T = 4, weight 0.9 x 16) equals the separate KD run."""

import json
import os

import pytest
from refusals import refusal

from benchmarks import ablation


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_plan_of_a_method(tmp_path):
    entries = ablation.plan(["at", "rkd"], out=str(tmp_path), teacher="T", seed=3, scale=2.0,
                            grid="full", quick=False)
    assert [(e.method, e.is_population) for e in entries] == [
        ("scratch", False), ("kd", False), ("at", True), ("at", False), ("at", False),
        ("rkd", True), ("rkd", False)]
    at = entries[2].config
    assert [dict(m) for m in at.population.members] == [
        {"objective.at.weight": w} for w in (100.0, 300.0, 1000.0, 3000.0, 10000.0)] + [
        {"optimizer.warmup_steps": 100}]
    assert at.num_steps == 2000 and at.seed == 3 and at.teacher.checkpoint == "T"
    assert tuple(entries[3].config.objective.at.student_feature) == ("stage2",)
    assert entries[6].config.objective.rkd.teacher_feature == "stage2"
    assert entries[5].labels[-2:] == ["distance only", "angle only"]
    recipe = ablation.plan(["crd"], out=str(tmp_path), teacher="T", seed=0, scale=1.0,
                           grid="recipe", quick=False)
    assert [(e.method, e.labels, e.is_population) for e in recipe] == [
        ("scratch", ["ce only"], False), ("kd", ["recipe"], False), ("crd", ["recipe"], False)]


def test_bad_methods_are_refused():
    assert refusal(lambda: ablation.check_methods(["adversarial"])) == (
        "--methods: 'adversarial' trains with ['adversarial', 'kd']; the ablation varies a "
        "recipe of 'ce' and one term (e.g. at, sp, rkd, pkt, crd, fkl)")
    assert refusal(lambda: ablation.check_methods(["nope"])).startswith(
        "--methods: unknown ['nope']; choose from ['kd', ")
    assert refusal(lambda: ablation.check_methods([])) == (
        "--methods is empty; e.g. --methods=at,sp,rkd,fkl,crd")


def test_quick_run_member_equals_its_separate_run(tmp_path):
    out = str(tmp_path)
    result = ablation.run_ablation(["fkl"], out=out, quick=True, log=lambda _: None)
    rows = {(r["method"], r["setting"]): r for r in result["rows"]}
    assert len(rows) == 2 + 9
    kd = rows["kd", "recipe"]
    as_kd = rows["fkl", "T 4, weight 0.9 x 16"]
    kd_log = _records(os.path.join(out, "kd", "metrics.jsonl"))
    member_log = _records(os.path.join(out, "fkl", "population", "members", "7", "metrics.jsonl"))
    train = lambda log: [(r["step"], r["loss"]) for r in log if r["split"] == "train"]
    assert [s for s, _ in train(member_log)] == [s for s, _ in train(kd_log)]
    assert [loss for _, loss in train(member_log)] == pytest.approx(
        [loss for _, loss in train(kd_log)], rel=1e-5)
    # equal to float tolerance: a near-tie digit of the 360 may flip, no more
    assert abs(as_kd["top1"] - kd["top1"]) <= 1 / 360
    assert abs(as_kd["agreement"] - kd["agreement"]) <= 1 / 360
    assert rows["scratch", "ce only"]["agreement"] is None
    table = ablation.markdown(result)
    scratch = rows["scratch", "ce only"]["top1"]
    assert (f"| fkl | T 4, weight 0.9 x 16 | {100 * as_kd['top1']:.1f} | "
            f"{100 * (as_kd['top1'] - scratch):+.1f} | {100 * as_kd['agreement']:.1f} | "
            "population |") in table
