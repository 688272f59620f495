"""The accuracy benchmark's plan: which runs each suite trains, with which config, into which
work dir (benchmarks/accuracy.py describes the suites).

`build_suites` checks the arguments and returns the `Suite`s; `validate` runs `prepare_run`
on every distinct config before anything trains. Roles of a run: 'teacher'; 'scratch' (the
student on hard labels); 'baseline' (another student trained without the teacher, here the
scratch student with the teacher's augmentation); 'student' (distilled from the teacher).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os

import ml_collections

from jaxdistill import checkpoint
from jaxdistill.experiment import scratch_config, teacher_config
from jaxdistill.recipes import METHODS
from jaxdistill.run_setup import prepare_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("methods", "hinton", "cifar100", "all")

# Published top-1 (%) on CIFAR-100, resnet32x4 -> resnet8x4: CRD paper (Tian et al., ICLR 2020)
# Table 1, and DKD (Zhao et al., CVPR 2022) Table 1; see configs/cifar100_methods.py.
CIFAR100_PUBLISHED = {"teacher": 79.42, "scratch": 72.50, "kd": 73.33, "fitnet": 73.50,
                      "at": 73.44, "sp": 72.94, "rkd": 71.90, "pkt": 73.64, "crd": 75.51,
                      "dkd": 76.32}
CIFAR100_METHODS = ("kd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "dkd")
# Hinton, Vinyals & Dean (2015), section 3: test errors on full MNIST (60,000 train, 10,000 test).
HINTON_PUBLISHED = {"teacher_errors": 67, "scratch_errors": 146, "distilled_errors": 74,
                    "test_examples": 10_000}
HINTON_PUBLISHED["gap_closed"] = ((HINTON_PUBLISHED["scratch_errors"]
                                   - HINTON_PUBLISHED["distilled_errors"])
                                  / (HINTON_PUBLISHED["scratch_errors"]
                                     - HINTON_PUBLISHED["teacher_errors"]))
QUICK_METHODS = ("kd", "dkd")
QUICK_SEEDS = 2


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of configs/<name>.py (unlocked, to be adjusted, then locked)."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jaxdistill_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@dataclasses.dataclass
class Run:
    """One training run of a suite."""

    suite: str
    name: str                   # 'teacher', 'scratch', 'scratch_<augment>', a method, 'distilled'
    role: str                   # 'teacher' | 'scratch' | 'baseline' | 'student'
    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    teacher: Run | None = None  # the teacher this run is compared with (and distilled from)
    external: bool = False      # a finished run given by --teacher_checkpoint: not trained here


@dataclasses.dataclass
class Suite:
    name: str
    title: str
    config_files: str
    runs: list[Run]
    names: list[str]            # row order: teacher, scratch, baselines, then the students
    shared_teacher: bool
    published: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def scale_steps(c: ml_collections.ConfigDict, scale: float) -> None:
    """Multiplies the step counts of `c` by `scale` (at least 1 step; 0 = 'off' stays 0)."""
    if scale == 1.0:
        return

    def s(n):
        return max(1, round(n * scale)) if n else n
    c.num_steps = s(c.num_steps)
    c.teacher.train.num_steps = s(c.teacher.train.num_steps)
    for field in ("log_every", "eval_every", "checkpoint_every"):
        c[field] = s(c[field])
    c.optimizer.warmup_steps = s(c.optimizer.warmup_steps)
    for term in c.objective.values():
        if "warmup_steps" in term:
            term.warmup_steps = s(term.warmup_steps)


def _finish(c, seed: int, scale: float, data_dir: str) -> ml_collections.ConfigDict:
    c.seed = seed
    if data_dir:
        c.data.data_dir = data_dir
    scale_steps(c, scale)
    return c


def _locked(c):
    c = copy.deepcopy(c)
    c.lock()
    return c


def _quick_methods(c: ml_collections.ConfigDict) -> None:
    """`<method>,tiny` (digits) with a real teacher (the normal 32-64 CNN) and a few dozen steps."""
    c.teacher.kwargs = ml_collections.ConfigDict()
    c.data.augment_pixels = 1  # 2-pixel jitter on 8x8 digits is too much for a short run
    c.teacher.train.num_steps = 300
    c.num_steps = 60
    c.log_every = c.eval_every = c.checkpoint_every = 30
    if "dkd" in c.objective:  # the config ramps DKD up over a tenth of the run
        c.objective.dkd.warmup_steps = c.num_steps // 10


def _quick_hinton(c: ml_collections.ConfigDict) -> None:
    """configs/mnist_kd.py (same models, T = 20) on digits with a few dozen steps."""
    c.data.name = "digits"
    c.data.augment_pixels = 1
    c.batch_size = 64
    c.eval_batch_size = 120
    c.teacher.train.num_steps = 300
    c.num_steps = 60
    c.log_every = c.eval_every = c.checkpoint_every = 30


def _distilled(c, teacher: Run):
    c = copy.deepcopy(c)
    c.teacher.checkpoint = teacher.workdir
    c.baseline = False
    return _locked(c)


def augmented_scratch(c) -> tuple[str, ml_collections.ConfigDict] | None:
    """('scratch_<augment>', the scratch student of `c` trained with its teacher's augmentation
    `teacher.train.augment`), or None where the student already trains with it (or the
    teacher with none). Beside the plain scratch student it shows how much of the
    teacher-student gap is the teacher's augmentation rather than its knowledge."""
    augment = c.teacher.train.augment
    if augment == "none" or augment == c.data.augment:
        return None
    s = scratch_config(c)
    with s.unlocked():
        s.data.augment = augment
    return f"scratch_{augment}", _locked(s)


def _baseline_note(name: str, c) -> str:
    return (f"{name}: the scratch student trained with its teacher's augmentation "
            f"(data.augment='{c.teacher.train.augment}', {c.data.augment_pixels} px); its gap "
            "closed is the share of the teacher-student gap that augmentation alone closes")


def _scratch_runs(suite: str, c, seed: int, teacher: Run, path) -> list[Run]:
    """The plain scratch student of `c` and, where it differs, the augmented one;
    `path(name)` is the work dir of each."""
    runs = [Run(suite, "scratch", "scratch", seed, _locked(scratch_config(c)), path("scratch"),
                teacher)]
    aug = augmented_scratch(c)
    if aug is not None:
        runs.append(Run(suite, aug[0], "baseline", seed, aug[1], path(aug[0]), teacher))
    return runs


def _names(runs: list[Run], students) -> list[str]:
    """Row order: teacher, scratch, the baselines, then `students`."""
    baselines = list(dict.fromkeys(r.name for r in runs if r.role == "baseline"))
    return ["teacher", "scratch", *baselines, *students]


def methods_suite(methods, seeds, *, quick, scale, root, data_dir, teacher_checkpoint) -> Suite:
    def cfg(method, seed):
        c = load_config("mnist_methods", f"{method},tiny" if quick else method)
        if quick:
            _quick_methods(c)
        return _finish(c, seed, scale, data_dir)
    teacher = Run("methods", "teacher", "teacher", 0, _locked(teacher_config(cfg("kd", 0))),
                  teacher_checkpoint or os.path.join(root, "teacher"),
                  external=bool(teacher_checkpoint))
    runs = [teacher]
    for seed in seeds:  # seed-major: after seed 0, every model has a result
        runs += _scratch_runs("methods", cfg("kd", seed), seed, teacher,
                              lambda n, s=seed: os.path.join(root, n, f"seed{s}"))
        for m in methods:
            runs.append(Run("methods", m, "student", seed, _distilled(cfg(m, seed), teacher),
                            os.path.join(root, m, f"seed{seed}"), teacher))
    data_name = "digits (quick)" if quick else "mnist5k"
    base = cfg("kd", 0)
    aug = augmented_scratch(base)
    return Suite("methods", f"Every method on {data_name}: CNN teacher -> CNN student",
                 "configs/mnist_methods.py" + (":<method>,tiny (quick)" if quick else ":<method>"),
                 runs, _names(runs, methods), shared_teacher=True,
                 notes=[_baseline_note(aug[0], base)] if aug else [])


def hinton_suite(seeds, *, quick, scale, root, data_dir) -> Suite:
    runs = []
    for seed in seeds:
        c = load_config("mnist_kd")
        if quick:
            _quick_hinton(c)
        c = _finish(c, seed, scale, data_dir)
        d = os.path.join(root, f"seed{seed}")
        teacher = Run("hinton", "teacher", "teacher", seed, _locked(teacher_config(c)),
                      os.path.join(d, "teacher"))
        runs += [teacher, *_scratch_runs("hinton", c, seed, teacher,
                                         lambda n, d=d: os.path.join(d, n)),
                 Run("hinton", "distilled", "student", seed, _distilled(c, teacher),
                     os.path.join(d, "distilled"), teacher)]
    notes = ["published: Hinton, Vinyals & Dean (2015), full MNIST (60,000 train / 10,000 test); "
             "here " + ("digits (quick mode)" if quick else
                        "mnist5k (4,000 train / 1,000 test)") +
             ", so compare error rates (%) and the gap closed, not counts"]
    aug = augmented_scratch(c)  # the same for every seed
    if aug:
        notes.append(_baseline_note(aug[0], c))
    return Suite("hinton", "Hinton et al. (2015) MNIST experiment"
                 + (" (quick: on digits)" if quick else " on mnist5k"),
                 "configs/mnist_kd.py", runs, _names(runs, ["distilled"]),
                 shared_teacher=False, published=dict(HINTON_PUBLISHED), notes=notes)


def cifar100_suite(methods, seeds, *, scale, root, data_dir, teacher_checkpoint) -> Suite:
    t = _finish(load_config("cifar100_teacher"), 0, scale, data_dir)
    teacher = Run("cifar100", "teacher", "teacher", 0, _locked(t),
                  teacher_checkpoint or os.path.join(root, "teacher"),
                  external=bool(teacher_checkpoint))
    runs = [teacher]
    for seed in seeds:
        base = _finish(load_config("cifar100_methods", "kd"), seed, scale, data_dir)
        runs += _scratch_runs("cifar100", base, seed, teacher,
                              lambda n, s=seed: os.path.join(root, n, f"seed{s}"))
        for m in methods:
            c = _finish(load_config("cifar100_methods", m), seed, scale, data_dir)
            runs.append(Run("cifar100", m, "student", seed, _distilled(c, teacher),
                            os.path.join(root, m, f"seed{seed}"), teacher))
    notes = [("published: CRD (Tian et al., ICLR 2020) Table 1 and DKD (Zhao et al., CVPR 2022) "
             "Table 1, resnet32x4 -> resnet8x4, top-1 (%) on the CIFAR-100 test set")]
    if scale != 1.0:
        notes.append(f"--steps_scale={scale}: shorter than the published 240-epoch recipe")
    return Suite("cifar100", "CIFAR-100: resnet32x4 -> resnet8x4",
                 "configs/cifar100_teacher.py, configs/cifar100_methods.py:<method>", runs,
                 _names(runs, methods), shared_teacher=True,
                 published=dict(CIFAR100_PUBLISHED), notes=notes)


def build_suites(suite: str, methods, num_seeds: int, *, quick=False, scale=1.0, out: str,
                 data_dir="", teacher_checkpoint="") -> list[Suite]:
    """The suites' runs (configs and work dirs); raises ValueError on a bad argument."""
    if suite not in SUITES:
        raise ValueError(f"--suite: unknown suite '{suite}'; choose from {list(SUITES)}")
    if num_seeds <= 0:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if not scale > 0:
        raise ValueError(f"--steps_scale must be > 0, got {scale}")
    if methods is not None:
        methods = list(dict.fromkeys(methods))
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"--methods: unknown method '{m}'; choose from {list(METHODS)}")
        if not methods:
            raise ValueError("--methods is empty")
    if teacher_checkpoint:
        teacher_checkpoint = os.path.abspath(os.path.expanduser(teacher_checkpoint))
        if suite not in ("methods", "cifar100"):
            raise ValueError("--teacher_checkpoint applies to --suite=methods or cifar100 (the "
                             "hinton suite trains one teacher per seed)")
    seeds = list(range(num_seeds))
    runs_root = os.path.join(os.path.abspath(out), "runs")
    suites = []
    if suite in ("methods", "all"):
        default = QUICK_METHODS if quick else METHODS
        suites.append(methods_suite(methods or list(default), seeds, quick=quick, scale=scale,
                                    root=os.path.join(runs_root, "methods"), data_dir=data_dir,
                                    teacher_checkpoint=teacher_checkpoint))
    if suite in ("hinton", "all"):
        suites.append(hinton_suite(seeds, quick=quick, scale=scale,
                                   root=os.path.join(runs_root, "hinton"), data_dir=data_dir))
    if suite == "cifar100":
        suites.append(cifar100_suite(methods or list(CIFAR100_METHODS), seeds, scale=scale,
                                     root=os.path.join(runs_root, "cifar100"),
                                     data_dir=data_dir, teacher_checkpoint=teacher_checkpoint))
    return suites


def validate(suites: list[Suite]) -> None:
    """`prepare_run` of every distinct config (seed 0's), before anything trains."""
    seen = set()
    for suite in suites:
        for run in suite.runs:
            if (suite.name, run.name) in seen:
                continue
            seen.add((suite.name, run.name))
            c = run.config
            if run.role == "student" and not run.teacher.external:
                c = copy.deepcopy(c)  # its teacher is not trained yet
                with c.unlocked():
                    c.teacher.checkpoint = ""
            prepare_run(c, teacher_checkpoint_required=False)
            if run.external:
                checkpoint.teacher_directory(run.workdir)
