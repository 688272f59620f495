"""The recipe search: successive halving over populations, its outputs, resume, bad input."""

import importlib.util
import json
import os
import shutil

import pytest
from conftest import load_config, set_fields
from refusals import refusal

from jaxdistill import population, sweep, sweep_report, validate

SPACE = {"fields": {"objective.kd.temperature": {"low": 1.0, "high": 20.0, "log": True},
                    "objective.kd.weight": {"low": 0.1, "high": 0.9},
                    "student.kwargs.widths": {"choices": [(16,), (32,)]}},
         "sampler": "tpe", "trials": 3, "brackets": 1, "rungs": (2, 4), "eta": 3, "seed": 0}


def _config():
    return set_fields(load_config("mnist_kd", "runlocal"), **{
        "teacher.kwargs": {"widths": (32,)}, "teacher.train.num_steps": 4, "batch_size": 32,
        "eval_batch_size": 200, "log_every": 0, "optimizer.warmup_steps": 0})


class _Counted:
    """train_population that counts its runs and raises at run `fail_at` (a kill)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.real = 0, fail_at, population.train_population

    def __call__(self, config, workdir):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        return self.real(config, workdir)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sweep"))
    config = _config()
    space = sweep.parse_space(SPACE, config)
    records = sweep.run_sweep(config, space, workdir, log=lambda _: None)
    paths = sweep_report.write(records, sweep.prepare_teacher(config, workdir), space, workdir,
                               "configs/mnist_kd.py", "space.py", "max")
    return config, space, workdir, records, paths


def test_halving_keeps_the_best_third_and_the_table_holds_every_trial(swept):
    _, _, workdir, records, paths = swept
    assert [r["shape"] for r in records] == [{"student.kwargs.widths": (16,)}] * 3 + [
        {"student.kwargs.widths": (32,)}] * 3
    for g in (0, 1):
        group = [r for r in records if r["group"] == g]
        best = max(group, key=lambda r: (r["rungs"][2], -r["trial"]))
        assert [r["state"] for r in group] == ["complete" if r is best else "pruned"
                                               for r in group]
        assert set(best["rungs"]) == {2, 4} and all(set(r["rungs"]) == {2} for r in group
                                                      if r is not best)
        # each rung's value is the member's own summary of that rung's population run
        run = os.path.join(workdir, f"group{g}", "bracket0", "rung0", "summary.json")
        with open(run) as f:
            members = json.load(f)["members"]
        assert [m["student_accuracy"] for m in members] == [r["rungs"][2] for r in group]
        assert [m["settings"] for m in members] == [r["settings"] for r in group]
        assert len({json.dumps(r["settings"], sort_keys=True) for r in group}) == 3
    with open(paths["trials"].replace(".md", ".json")) as f:
        saved = json.load(f)
    assert len(saved["trials"]) == 6 and saved["best"]["state"] == "complete"
    assert saved["best"]["value"] == max(r["value"] for r in records if r["state"] == "complete")
    assert set(saved["latency_ms"]) == {"0", "1"} and all(v > 0 for v in
                                                          saved["latency_ms"].values())
    with open(paths["trials"]) as f:
        assert f.read().count("\n") == 2 + 6
    assert os.path.getsize(paths["sweep"]) > 10_000


def test_best_config_is_the_best_trials_run_config(swept):
    _, space, workdir, records, paths = swept
    spec = importlib.util.spec_from_file_location("best", paths["best_config"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    best = sweep_report.best_record(records, "max")
    assert config.num_steps == space.rungs[-1] and config.population.size == 0
    assert config.objective.kd.temperature == best["settings"]["objective.kd.temperature"]
    assert config.objective.kd.weight == best["settings"]["objective.kd.weight"]
    assert config.student.kwargs.widths == best["shape"]["student.kwargs.widths"]
    assert config.data.mean == (0.1307,)  # tuples are tuples again
    assert config.teacher.checkpoint == os.path.join(workdir, "teacher")
    validate.check_config(config)


def test_a_killed_sweep_resumes_without_retraining_finished_rungs(swept, tmp_path, monkeypatch):
    config, space, workdir, records, _ = swept
    again = _Counted()
    monkeypatch.setattr(population, "train_population", again)
    assert sweep.run_sweep(config, space, workdir, log=lambda _: None) == records
    assert again.calls == 0  # a finished sweep reruns nothing
    killed = str(tmp_path / "killed")
    shutil.copytree(os.path.join(workdir, "teacher"), os.path.join(killed, "teacher"))
    kill = _Counted(fail_at=3)  # dies starting group 1's first rung
    monkeypatch.setattr(population, "train_population", kill)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, space, killed, log=lambda _: None)
    resume = _Counted()
    monkeypatch.setattr(population, "train_population", resume)
    assert sweep.run_sweep(config, space, killed, log=lambda _: None) == records
    assert resume.calls == 2  # group 1's two rungs; group 0's are read back


@pytest.mark.parametrize(("change", "message"), [
    ({"bogus": 1}, ("--space: unknown keys ['bogus']; use 'fields' and ['brackets', 'eta', "
                    "'rungs', 'sampler', 'seed', 'trials']")),
    ({"sampler": "grid"}, "--space: sampler 'grid' is not one of ['random', 'tpe']"),
    ({"rungs": (4, 2)}, "--space: rungs (4, 2) must be increasing positive step counts"),
    ({"fields": {"student.kwargs.widths": {"low": 1, "high": 2}}},
     ("--space: 'student.kwargs.widths' is not a per-member field, so it is searched as "
      "student shapes: give it 'choices'")),
    ({"fields": {"objective.kd.weight": {"low": 0.9, "high": 0.1}}},
     "--space: field 'objective.kd.weight' has low 0.9 >= high 0.1"),
    ({"fields": {"student.nonsense": {"choices": [1]}}},
     "--space: 'student.nonsense' is not a field of the config"),
])
def test_bad_spaces_are_refused_in_one_line(change, message):
    assert refusal(lambda: sweep.parse_space({**SPACE, **change}, _config())) == message


def test_another_space_in_the_same_workdir_is_refused(swept):
    config, _, workdir, _, _ = swept
    other = sweep.parse_space({**SPACE, "trials": 4}, config)
    with pytest.raises(ValueError) as e:
        sweep.run_sweep(config, other, workdir, log=lambda _: None)
    assert str(e.value) == (
        f"{workdir} holds a sweep of another config or space; use a new --workdir (or the same "
        "config and --space to resume it)")
