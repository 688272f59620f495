"""Teacher -> student pairs the benchmarks measure, and the run configs that build them.

Each pair names its models, its input (image shape, class count) and the feature term its
`feature` mode adds. `run_config(pair, mode, ...)` returns a real jaxdistill config
(`jaxdistill.defaults.base_config()` or `jaxdistill.recipes.cifar100_recipe`) for one
benchmark mode:

- ``student``: the student's supervised step (objective ``ce`` only, no teacher);
- ``kd_online``: ``ce`` + ``kd`` with the teacher run inside the step;
- ``feature``: ``ce`` + ``kd`` + the pair's feature term (``at`` or ``hint``);
- ``kd_offline``: ``ce`` + ``kd`` with the teacher's outputs read from an offline store, so
  without augmentation (``data.augment='none'``: stored outputs describe un-augmented images);
- ``teacher_forward`` uses the ``kd_online`` config (its teacher half).

The datasets are synthetic (`dataset_info`): throughput needs shapes, not data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxdistill import data
from jaxdistill.defaults import base_config
from jaxdistill.recipes import cifar100_recipe


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    teacher: str                    # registry name
    student: str                    # registry name
    image_shape: tuple[int, int, int]
    num_classes: int
    recipe: str                     # 'mnist' (base config, no augmentation) | 'cifar100'
    feature_term: tuple[str, dict[str, Any]]  # (objective term name, its config)
    temperature: float = 4.0


PAIRS: dict[str, Pair] = {
    # Hinton, Vinyals & Dean (2015): the MNIST MLPs, 784-1200-1200-10 -> 784-800-800-10.
    "mlp": Pair("mlp", "mlp_teacher", "mlp_student", (28, 28, 1), 10, "mnist",
                ("hint", {"weight": 100.0, "student_feature": "hidden2",
                          "teacher_feature": "hidden2"}),
                temperature=20.0),
    # CRD / DKD benchmark pair on CIFAR-100; attention transfer on the last stage (8x8).
    "resnet": Pair("resnet", "resnet32x4", "resnet8x4", (32, 32, 3), 100, "cifar100",
                   ("at", {"weight": 1000.0, "student_feature": "stage3",
                           "teacher_feature": "stage3"})),
    # DeiT-Small -> DeiT-Tiny sizes on 32x32 images with 4x4 patches (65 tokens).
    "vit": Pair("vit", "vit_small", "vit_tiny", (32, 32, 3), 100, "cifar100",
                ("hint", {"weight": 100.0, "student_feature": "block12",
                          "teacher_feature": "block12"})),
}

CONFIG_MODES = ("student", "kd_online", "feature", "kd_offline")


def dataset_info(pair: Pair) -> data.DatasetInfo:
    """A synthetic dataset description with the pair's shapes (nothing on disk)."""
    return data.DatasetInfo(name=f"synthetic_{pair.name}", data_dir="",
                            num_classes=pair.num_classes, image_shape=pair.image_shape,
                            splits={"train": 50_000, "test": 10_000})


def run_config(pair: Pair, mode: str, *, batch_size: int, dtype: str = "float32"):
    """The jaxdistill config of `mode` (one of `CONFIG_MODES`) for `pair`."""
    if mode not in CONFIG_MODES:
        raise ValueError(f"mode '{mode}' has no run config; choose one of {CONFIG_MODES}")
    if pair.recipe == "cifar100":
        c = cifar100_recipe(batch_size=batch_size)
    else:
        c = base_config()
        c.batch_size = batch_size
    c.data.name = dataset_info(pair).name
    c.num_steps = 1000
    c.eval_batch_size = batch_size
    c.student.model = pair.student
    c.student.dtype = dtype
    c.teacher.dtype = dtype
    if mode == "student":
        c.teacher.model = ""
        c.objective.ce.weight = 1.0
    else:
        c.teacher.model = pair.teacher
        c.objective.ce.weight = 0.1
        c.objective.kd = {"weight": 0.9, "temperature": pair.temperature}
        if mode == "feature":
            name, term = pair.feature_term
            c.objective[name] = dict(term)
        if mode == "kd_offline":
            c.data.augment = "none"
    c.lock()
    return c
