"""A population of students in one step (jaxdistill.population) on 8 host devices: each
member equals a separate run with its settings, the population resumes, bad settings fail
in one line."""

import json
import os

import numpy as np
import pytest
from conftest import load_config, set_fields
from refusals import refusal

from jaxdistill import experiment, population, validate
from jaxdistill.population_config import member_configs
from jaxdistill.train import train_and_evaluate

N = 4
# every kind of per-member setting, one or two per member
MEMBERS = ({}, {"objective.kd.temperature": 8.0, "objective.kd.weight": 0.5},
           {"optimizer.learning_rate": 0.1, "optimizer.warmup_steps": 2},
           {"seed": 3, "optimizer.weight_decay": 1e-2, "objective.kd.temperature": 2.0})
TERMS = {"train": ("loss", "ce", "kd", "accuracy", "agreement", "grad_norm", "learning_rate"),
         "eval": ("accuracy", "teacher_accuracy", "agreement")}  # at least these
SPEED = {"time", "examples_per_second"}  # not compared


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["split"] == split}


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The population of configs/mnist_population.py:tiny with MEMBERS, its members split
    over the mesh's 'model' axis: run as the command runs it (a teacher trained first) for 2
    steps, then resumed to 4; and the 4 members' separate runs from that teacher."""
    root = tmp_path_factory.mktemp("population")
    config = set_fields(load_config("mnist_population", "tiny"), **{
        "optimizer.schedule": "constant", "mesh.shape": (4, 2), "population.axis": "model",
        "population.members": MEMBERS})
    workdir = str(root / "population")
    first = experiment.run(set_fields(config, num_steps=2), workdir)
    set_fields(config, num_steps=4, **{"teacher.checkpoint": os.path.join(workdir, "teacher")})
    summary = population.train_population(config, workdir)
    separate = []
    for i, member_cfg in enumerate(member_configs(config)):
        separate.append(str(root / f"separate{i}"))
        train_and_evaluate(set_fields(member_cfg, checkpoint_every=0), separate[-1])
    return first, workdir, summary, separate


def test_each_member_equals_its_separate_run(runs):
    """Train losses at every step (steps 1-2 before the resume, 3-4 after it) and eval
    metrics equal a separate run's with the member's settings, though the members run
    vmapped, sharded over 'model' and share one teacher pass."""
    _, workdir, summary, separate = runs
    assert summary["population_size"] == N
    assert [m["settings"] for m in summary["members"]] == [dict(m) for m in MEMBERS]
    for i, other in enumerate(separate):
        mine = os.path.join(workdir, "members", str(i))
        for split, steps in (("train", [1, 2, 3, 4]), ("eval", [2, 4])):
            records, reference = _records(mine, split), _records(other, split)
            assert sorted(records) == sorted(reference) == steps
            for step in steps:
                keys = set(reference[step]) - SPEED
                assert set(records[step]) - SPEED == keys and set(TERMS[split]) <= keys
                for key in keys - {"split"}:
                    np.testing.assert_allclose(records[step][key], reference[step][key],
                                               rtol=2e-5, atol=1e-6,
                                               err_msg=f"member {i} {split} step {step} {key}")
        s, ref = _summary(mine), _summary(other)
        assert summary["members"][i] == {"member": i, "settings": dict(MEMBERS[i]), **s}
        for key in ("student_accuracy", "agreement", "steps", "student_params"):
            assert s[key] == pytest.approx(ref[key], abs=1e-6), (i, key)
    # the members really differ: the settings reach the step
    losses = [_records(os.path.join(workdir, "members", str(i)), "train")[4]["loss"]
              for i in range(N)]
    assert len(set(np.round(losses, 6))) == N


def test_one_checkpoint_holds_the_population(runs):
    """One Orbax run state per saved step, its arrays stacked over the members; the
    command's summary lists every member beside the teacher it trained."""
    first, workdir, summary, _ = runs
    assert first["population_size"] == N and len(first["members"]) == N
    assert all(m["steps"] == 2 and "teacher_examples_per_second" in m for m in first["members"])
    for m in first["members"]:  # every member has its bias report
        assert [r["student"] for r in m["bias"]["per_class"]] == m["student_per_class_accuracy"]
        assert [r["teacher"] for r in m["bias"]["per_class"]] == m["teacher_per_class_accuracy"]
        assert m["bias"]["teacher_error_repeat_share"]["student"] == m["error_repeat"]
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == [2, 4]
    assert summary["members"][0]["steps"] == 4


BAD_POPULATIONS = [
    ({"population.members": ({}, {})}, ("config.population.members has 2 entries for "
                                        "config.population.size 4; give one dict per member (or "
                                        "none: every member is the base run)")),
    ({"population.members": ({"student.model": "mlp"},) * 4},
     ("config.population.members[0]: 'student.model' cannot differ between members; a member "
      "sets seed, optimizer.{learning_rate, weight_decay, warmup_steps}, "
      "objective.<term>.weight or objective.<term>.<float field>")),
    ({"population.members": ({"objective.crd.weight": 1.0},) * 4}, (
        "config.population.members[0]: 'objective.crd.weight': the objective has no term "
        "'crd'; it has ['ce', 'kd']")),
    ({"population.members": ({"objective.kd.standardize": True},) * 4},
     ("config.population.members[0]: 'objective.kd.standardize': a member may set a term's "
      "weight or a float field of its loss (temperature for 'kd'); the rest is shared")),
    ({"population.members": ({}, {}, {"optimizer.learning_rate": -1.0}, {})},
     ("config.population.members[2]: config.optimizer.learning_rate must be a finite number > "
      "0, got -1.0")),
    ({"population.axis": "pop"}, ("config.population.axis 'pop' is not in config.mesh.axes "
                                  "('data', 'model'); use one of them or ''")),
    ({"population.size": 0}, ("config.population.size is 0, so config.population.members / "
                              ".axis do nothing; set config.population.size to the number of "
                              "members")),
]


@pytest.mark.parametrize("fields, message", BAD_POPULATIONS)
def test_bad_population_settings_fail_in_one_line(fields, message):
    config = set_fields(load_config("mnist_population", "tiny"), **fields)
    assert refusal(lambda: validate.check_config(config)) == message


def test_config_trains_eight_temperatures():
    """The issue's population: 8 mnist5k members, the Hinton recipe, one temperature each."""
    config = load_config("mnist_population")
    validate.check_config(config)
    members = member_configs(config)
    assert config.data.name == "mnist5k" and len(members) == 8
    assert len({m.objective.kd.temperature for m in members}) == 8
    assert all(m.population.size == 0 and m.seed == config.seed for m in members)


def test_benchmark_population_fields():
    """The throughput record of N students: per-member time and the issue's goal, 1.1 x the
    student step + the teacher forward / N, from the same group's records."""
    from benchmarks.throughput import population_fields
    rec = {"step_time_s": 0.8, "examples_per_second": 320.0}
    out = population_fields(rec, 4, {"step_time_s": 0.1}, {"step_time_s": 0.2})
    assert out["mode"] == "population" and out["population_size"] == 4
    assert out["member_step_time_s"] == pytest.approx(0.2)
    assert out["member_examples_per_second"] == pytest.approx(1280.0)
    assert out["member_goal_s"] == pytest.approx(0.11 + 0.05)
    assert out["member_cost_over_goal"] == pytest.approx(0.2 / 0.16)
