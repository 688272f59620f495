"""Teacher -> student pairs the benchmarks measure, and the run configs that build them.

Each pair names its models, its input (image shape and class count, or vocabulary and
sequence length), its default batch sizes, the modes it has and the feature term its
`feature` mode adds. `run_config(pair, mode, ...)` returns a real jaxdistill config
(`jaxdistill.defaults.base_config()` or `jaxdistill.recipes.cifar100_recipe`) for one
benchmark mode:

- ``student``: the student's supervised step (objective ``ce`` only, no teacher);
- ``kd_online``: ``ce`` + ``kd`` with the teacher run inside the step;
- ``feature``: ``ce`` + ``kd`` + the pair's feature term (``at`` or ``hint``);
- ``kd_offline``: ``ce`` + ``kd`` with the teacher's outputs read from an offline store, so
  without augmentation (``data.augment='none'``: stored outputs describe un-augmented images);
- ``teacher_forward`` uses the ``kd_online`` config (its teacher half).

Token pairs (``config.task='causal_lm'``, decoder LMs) have the modes ``student``,
``teacher_forward``, ``kd_online`` and ``kd_offline`` (from a token store's top-k entries,
`jaxdistill.store.tokens`), each in two loss forms (`LOSS_IMPLS`): ``chunked``
(``config.lm.chunk_size`` = the pair's `chunk_size`: every logit term chunk by chunk through
each model's output head, `jaxdistill.losses.chunked`) and ``naive`` (``chunk_size=0``: the
[B, L, V] logits of both models held whole).

The datasets are synthetic (`dataset_info`): throughput needs shapes, not data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxdistill import data
from jaxdistill.defaults import base_config
from jaxdistill.recipes import cifar100_recipe

ALL_MODES = ("student", "teacher_forward", "kd_online", "feature", "kd_offline",
             "population")
LM_MODES = ("student", "teacher_forward", "kd_online", "kd_offline")
LOSS_IMPLS = ("chunked", "naive")  # the two loss forms of a token pair


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    teacher: str                    # registry name
    student: str                    # registry name
    image_shape: tuple[int, ...]    # (H, W, C); () for a token pair
    num_classes: int                # classes; the vocabulary of a token pair
    recipe: str                     # 'mnist' (base config) | 'cifar100' | 'lm' (causal_lm)
    feature_term: tuple[str, dict[str, Any]] | None  # (objective term name, its config)
    temperature: float = 4.0
    seq_len: int = 0                # token pair: positions per sequence
    chunk_size: int = 0             # token pair: config.lm.chunk_size of the 'chunked' form
    batch_sizes: tuple[int, ...] = (128, 256)  # measured unless --batch_sizes says otherwise
    modes: tuple[str, ...] = ALL_MODES  # the benchmark modes this pair has
    quick: str = ""                 # the pair --quick measures in its place ('' = itself)
    quick_batch_sizes: tuple[int, ...] = ()  # --quick's batch sizes (() = batch_sizes)
    quick_timing: tuple[tuple[str, int], ...] = ()  # --quick's (warmup, steps, repeats)
    # in place of the benchmark's quick ones, e.g. (("steps", 2),)

    @property
    def tokens(self) -> bool:
        return self.seq_len > 0

    @property
    def loss_impls(self) -> tuple[str | None, ...]:
        """The loss forms measured: both for a token pair, the one (None) for images."""
        return LOSS_IMPLS if self.tokens else (None,)


_LM = {"image_shape": (), "num_classes": 32_768, "recipe": "lm", "feature_term": None,
       "temperature": 1.0, "seq_len": 1024, "chunk_size": 64, "modes": LM_MODES}

PAIRS: dict[str, Pair] = {
    # Hinton, Vinyals & Dean (2015): the MNIST MLPs, 784-1200-1200-10 -> 784-800-800-10.
    "mlp": Pair("mlp", "mlp_teacher", "mlp_student", (28, 28, 1), 10, "mnist",
                ("hint", {"weight": 100.0, "student_feature": "hidden2",
                          "teacher_feature": "hidden2"}),
                temperature=20.0, quick_batch_sizes=(256,)),
    # CRD / DKD benchmark pair on CIFAR-100; attention transfer on the last stage (8x8).
    "resnet": Pair("resnet", "resnet32x4", "resnet8x4", (32, 32, 3), 100, "cifar100",
                   ("at", {"weight": 1000.0, "student_feature": "stage3",
                           "teacher_feature": "stage3"})),
    # DeiT-Small -> DeiT-Tiny sizes on 32x32 images with 4x4 patches (65 tokens).
    "vit": Pair("vit", "vit_small", "vit_tiny", (32, 32, 3), 100, "cifar100",
                ("hint", {"weight": 100.0, "student_feature": "block12",
                          "teacher_feature": "block12"})),
    # Decoder LMs at V = 32,768 and L = 1,024, for an accelerator: lm_base (~110M parameters,
    # 25M of them the tied embedding) -> lm_20m (~22M, 12.6M embedding), 8 x 1024 tokens.
    "lm": Pair("lm", "lm_base", "lm_20m", **_LM, batch_sizes=(8,), quick="lm_quick"),
    # The same vocabulary and length with small models (lm_student, 4.5M parameters ->
    # lm_tiny, 2.2M; both mostly embedding), 2 x 1024 tokens: the memory comparison on a CPU,
    # in few steps (a KD step is about 40-80 GFLOP here, a second or more on 2 cores).
    "lm_quick": Pair("lm_quick", "lm_student", "lm_tiny", **_LM, batch_sizes=(2,),
                     quick_timing=(("warmup", 1), ("steps", 2), ("repeats", 5))),
}

DEFAULT_PAIRS = ("mlp", "resnet", "vit", "lm")  # --pairs' default (lm_quick is lm's quick form)
CONFIG_MODES = ("student", "kd_online", "feature", "kd_offline")


def quick_pair(name: str) -> tuple[Pair, tuple[int, ...]]:
    """(the pair --quick measures for `name`, its batch sizes there; its timing there is
    `quick_timing`, over the benchmark's own quick timing)."""
    pair = PAIRS[name]
    pair = PAIRS[pair.quick] if pair.quick else pair
    return pair, pair.quick_batch_sizes or pair.batch_sizes


def with_shape(pair: Pair, *, vocab_size: int = 0, seq_len: int = 0, chunk_size: int = 0
               ) -> Pair:
    """A token pair at another vocabulary, length or chunk size (0 keeps the pair's); the
    chunk size is clipped to the length. Image pairs are returned as they are."""
    if not pair.tokens:
        return pair
    seq_len = seq_len or pair.seq_len
    return dataclasses.replace(pair, num_classes=vocab_size or pair.num_classes,
                               seq_len=seq_len, chunk_size=min(chunk_size or pair.chunk_size,
                                                               seq_len))


def dataset_info(pair: Pair) -> data.DatasetInfo:
    """A synthetic dataset description with the pair's shapes (nothing on disk)."""
    if pair.tokens:
        return data.DatasetInfo(name=f"synthetic_{pair.name}", data_dir="",
                                num_classes=pair.num_classes, image_shape=(),
                                splits={"train": 50_000, "test": 1_000}, kind="tokens",
                                seq_len=pair.seq_len)
    return data.DatasetInfo(name=f"synthetic_{pair.name}", data_dir="",
                            num_classes=pair.num_classes, image_shape=pair.image_shape,
                            splits={"train": 50_000, "test": 10_000})


def run_config(pair: Pair, mode: str, *, batch_size: int, dtype: str = "float32",
               loss_impl: str | None = None):
    """The jaxdistill config of `mode` (one of `CONFIG_MODES`) for `pair`; a token pair also
    takes its loss form `loss_impl` (one of `LOSS_IMPLS`)."""
    if mode not in CONFIG_MODES:
        raise ValueError(f"mode '{mode}' has no run config; choose one of {CONFIG_MODES}")
    if mode not in pair.modes:
        raise ValueError(f"pair '{pair.name}' has no mode '{mode}' (its modes: {pair.modes})")
    if loss_impl not in pair.loss_impls:
        raise ValueError(f"pair '{pair.name}': loss_impl {loss_impl!r} is not one of "
                         f"{pair.loss_impls}")
    if pair.recipe == "cifar100":
        c = cifar100_recipe(batch_size=batch_size)
    else:
        c = base_config()
        c.batch_size = batch_size
    if pair.recipe == "lm":  # as configs/lm_kd.py trains: adamw, clipped
        c.task = "causal_lm"
        c.data.vocab_size = pair.num_classes
        c.data.seq_len = pair.seq_len
        c.lm.chunk_size = pair.chunk_size if loss_impl == "chunked" else 0
        c.lm.sample_tokens = 0  # the demo's samples: none here (and any length fits)
        c.optimizer.name = "adamw"
        c.optimizer.learning_rate = 3e-3
        c.optimizer.weight_decay = 0.01
        c.optimizer.grad_clip = 1.0
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
