"""What a rerun does to a workdir's records: config.json (a change that alters the run is
refused, one that does not is recorded) and metrics.jsonl (the resumed steps' records go)."""

import glob
import json
import os
import struct

import ml_collections
import pytest
from conftest import load_config, set_fields
from refusals import refusal
from tensorboardX.proto import event_pb2

from jaxdistill import run_record
from jaxdistill.metrics import MetricWriter


@pytest.fixture
def recorded(tmp_path):
    """A workdir whose config.json records digits_kd:tiny; returns (workdir, that config)."""
    config = load_config("digits_kd", "tiny")
    run_record.record(config, str(tmp_path))
    return str(tmp_path), config


def test_config_json_reads_back_as_the_same_config(recorded):
    workdir, config = recorded
    with open(os.path.join(workdir, run_record.CONFIG)) as f:
        again = ml_collections.ConfigDict(json.load(f))
    assert again.data.mean == [0.0] and again.objective.kd.temperature == 4.0
    assert run_record.changed_fields(json.loads(run_record.config_json(again, workdir)),
                                     json.loads(run_record.config_json(config, workdir))) == []
    run_record.check(again, workdir)


def test_a_teacher_trained_into_the_workdir_is_recorded_as_such_and_moves_with_it(tmp_path):
    config = load_config("digits_kd", "tiny")
    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    set_fields(config, **{"teacher.checkpoint": str(first / "teacher")})  # as experiment.run sets it
    run_record.record(config, str(first))
    with open(first / run_record.CONFIG) as f:
        assert json.load(f)["teacher"]["checkpoint"] == ""
    os.rename(first, moved)
    set_fields(config, **{"teacher.checkpoint": str(moved / "teacher")})
    run_record.check(config, str(moved))


ALLOWED = {"log_every": 1, "eval_every": 0, "checkpoint_every": 2, "keep_checkpoints": 5,
           "eval_batch_size": 60, "num_steps": 50, "baseline": False, "mesh.shape": (2, -1),
           "mesh.student_rule": "fsdp", "data.data_dir": "/elsewhere"}


def test_changes_to_how_the_run_is_carried_out_are_allowed_and_recorded(recorded):
    workdir, config = recorded
    set_fields(config, **ALLOWED)
    run_record.check(config, workdir)
    run_record.record(config, workdir)
    with open(os.path.join(workdir, run_record.CONFIG)) as f:
        assert json.load(f)["num_steps"] == 50


# A field whose change alters the run -> (old, new) as the error names them.
REFUSED = [
    ({"data.mean": (0.5,)}, "data.mean", "[0.0]", "[0.5]"),
    ({"data.augment": "crop_flip"}, "data.augment", '"none"', '"crop_flip"'),
    ({"seed": 1}, "seed", "0", "1"),
    ({"batch_size": 32}, "batch_size", "64", "32"),
    ({"task": "causal_lm"}, "task", '"classification"', '"causal_lm"'),
    ({"student.kwargs.widths": (16,)}, "student.kwargs.widths", "[32]", "[16]"),
    ({"teacher.checkpoint": "/other"}, "teacher.checkpoint", '""', '"/other"'),
    ({"objective.kd.temperature": 2.0}, "objective.kd.temperature", "4.0", "2.0"),
    ({"optimizer.learning_rate": 0.1}, "optimizer.learning_rate", "0.05", "0.1"),
]


@pytest.mark.parametrize("fields, name, old, new", REFUSED, ids=[c[1] for c in REFUSED])
def test_a_change_that_alters_the_run_is_refused_in_one_line(recorded, fields, name, old, new):
    workdir, config = recorded
    set_fields(config, log_every=1, **fields)  # an allowed change beside it is not named
    assert refusal(lambda: run_record.check(config, workdir), workdir) == (
        f"config.{name}: changed since this workdir was started ({old} -> {new}); use a new "
        "--workdir or restore the old value")


def test_every_changed_field_is_named_and_a_new_section_is_one_field(recorded):
    workdir, config = recorded
    with config.unlocked():
        config.extra_teachers.second = {"model": "cnn", "checkpoint": "/t2"}
    set_fields(config, seed=3)
    with pytest.raises(ValueError) as e:
        run_record.check(config, workdir)
    assert str(e.value) == (
        'config.extra_teachers.second: changed since this workdir was started (absent -> '
        '{"checkpoint": "/t2", "model": "cnn"}), and so did config.seed (0 -> 3); use a new '
        "--workdir or restore the old values")


def _started_before(workdir, *fields):
    """Drops dotted `fields` from `workdir`'s config.json, as if it had been started before
    jaxdistill had them."""
    path = os.path.join(workdir, run_record.CONFIG)
    with open(path) as f:
        old = json.load(f)
    for field in fields:
        *path_to, leaf = field.split(".")
        node = old
        for key in path_to:
            node = node[key]
        del node[leaf]
    run_record.write_atomically(path, json.dumps(old, indent=2, sort_keys=True) + "\n")


# a base-config field, a base-config section, a field of a term the record has
ADDED = ("data.seed", "student.pruning", "objective.kd.temperature")


def test_a_field_added_since_the_record_at_its_default_is_unchanged(recorded):
    workdir, config = recorded
    _started_before(workdir, *ADDED)
    run_record.check(config, workdir)  # data.seed -1, pruning off, kd's temperature 4.0
    run_record.record(config, workdir)
    with open(os.path.join(workdir, run_record.CONFIG)) as f:
        again = json.load(f)
    assert again["data"]["seed"] == -1 and again["student"]["pruning"]["method"] == "none"


def test_a_field_added_since_the_record_off_its_default_is_a_change(recorded):
    workdir, config = recorded
    _started_before(workdir, *ADDED, "objective.ce")
    set_fields(config, **{"data.seed": 5, "student.pruning.method": "magnitude",
                          "objective.kd.temperature": 2.0})
    assert refusal(lambda: run_record.check(config, workdir), workdir) == (
        "config.data.seed: changed since this workdir was started (absent = default -1 -> 5), "
        'and so did config.objective.ce (absent -> {"weight": 0.5}), '
        "config.objective.kd.temperature (absent = default 4.0 -> 2.0), "
        'config.student.pruning.method (absent = default "none" -> "magnitude"); use a new '
        "--workdir or restore the old values")  # a term the record lacks: at any weight


def test_a_removed_field_in_the_record_is_ignored(recorded):
    workdir, config = recorded
    path = os.path.join(workdir, run_record.CONFIG)
    with open(path) as f:
        old = json.load(f)
    old["data"]["labeled"] = False  # removed at issue 14: it never turned labels off
    run_record.write_atomically(path, json.dumps(old))
    run_record.check(config, workdir)
    set_fields(config, seed=7)
    assert refusal(lambda: run_record.check(config, workdir), workdir) == (
        "config.seed: changed since this workdir was started (0 -> 7); use a new --workdir or "
        "restore the old value")


def test_a_workdir_without_a_readable_record(tmp_path):
    config = load_config("digits_kd", "tiny")
    run_record.check(config, str(tmp_path))  # a new workdir (or an older version's) accepts any
    with open(tmp_path / run_record.CONFIG, "w") as f:
        f.write('{"seed": ')
    assert refusal(lambda: run_record.check(config, str(tmp_path)), tmp_path) == (
        f"--workdir={tmp_path}: config.json is not valid JSON (Expecting value: line 1 column 10 "
        "(char 9)); restore it, or delete it to accept the current config")


def _events(directory):
    """Every event of the TensorBoard event files in `directory` (TFRecord framing)."""
    events = []
    for path in sorted(glob.glob(os.path.join(directory, "events.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_a_resume_drops_the_records_it_supersedes(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 6):
        writer.write(step, "train", {"loss": 1.0 / step})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "split": "tr')  # torn by a kill mid-write
    resumed = MetricWriter(str(tmp_path), enabled=True)
    resumed.drop_after(3)
    resumed.write(4, "train", {"loss": 0.5})
    resumed.close()
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    starts = [e.step for e in _events(tmp_path / "tensorboard")
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]  # TensorBoard hides the first run's events from step 4 on
