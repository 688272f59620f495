"""Recipes shared by several configs: the objective of each distillation method, and
the CIFAR-100 training recipe of the CRD/DKD papers' public code.

Loss weights follow the CRD repository (Tian et al. 2020, RepDistiller) for the feature
methods, the DKD repository (Zhao et al. 2022, mdistiller) for DKD, and the logit
standardisation repository (Sun et al. 2024) for `lskd` / `lsdkd`.
"""

from __future__ import annotations

import ml_collections

from jaxdistill.defaults import base_config


def method_objective(method: str, *, hint_feature: str, map_feature: str,
                     at_features: tuple[str, ...]) -> dict:
    """Objective terms of `method`; `hint_feature` is the stage FitNets regresses,
    `map_feature` the NHWC stage SP compares, `at_features` the stages attention transfer
    sums over (RepDistiller's `feat[1:-1]`, mdistiller's `feats[1:]`: every stage output)."""
    pair = lambda f: {"student_feature": f, "teacher_feature": f}
    methods = {
        "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
        "lskd": {"ce": {"weight": 0.1},
                 "kd": {"weight": 9.0, "temperature": 2.0, "standardize": True}},
        "dkd": {"ce": {"weight": 1.0},
                "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                        "warmup_steps": 0}},
        # Sun et al.'s tools/train.py --logit-stand: DKD's alpha and beta x kd_weight 9, T = 2.
        "lsdkd": {"ce": {"weight": 1.0},
                  "dkd": {"weight": 1.0, "alpha": 9.0, "beta": 72.0, "temperature": 2.0,
                          "standardize": True, "warmup_steps": 0}},
        "fitnet": {"ce": {"weight": 1.0}, "hint": {"weight": 100.0, **pair(hint_feature)}},
        "at": {"ce": {"weight": 1.0}, "at": {"weight": 1000.0, **pair(tuple(at_features))}},
        "sp": {"ce": {"weight": 1.0}, "sp": {"weight": 3000.0, **pair(map_feature)}},
        "rkd": {"ce": {"weight": 1.0}, "rkd": {"weight": 1.0}},
        "pkt": {"ce": {"weight": 1.0}, "pkt": {"weight": 30000.0}},
        "crd": {"ce": {"weight": 1.0}, "crd": {"weight": 0.8}},
        "adversarial": {"ce": {"weight": 1.0}, "kd": {"weight": 0.9, "temperature": 4.0},
                        "adversarial": {"weight": 0.1, "temperature": 4.0}},
        "fkl": {"ce": {"weight": 0.1}, "fkl": {"weight": 0.9}},
        "rkl": {"ce": {"weight": 0.1}, "rkl": {"weight": 0.9}},
        "jsd": {"ce": {"weight": 0.1}, "jsd": {"weight": 0.9}},
        "tvd": {"ce": {"weight": 0.1}, "tvd": {"weight": 0.9}},
    }
    if method not in methods:
        raise ValueError(f"unknown method '{method}'; choose one of {sorted(methods)}")
    return methods[method]


METHODS = ("kd", "lskd", "dkd", "lsdkd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "adversarial",
           "fkl", "rkl", "jsd", "tvd")


def set_objective(config: ml_collections.ConfigDict, terms: dict) -> None:
    """Replaces `config.objective` with `terms`."""
    with config.unlocked():
        config.objective = ml_collections.ConfigDict(terms)


CIFAR_TRAIN_EXAMPLES = 50_000


def cifar100_recipe(batch_size: int = 64, epochs: int = 240):
    """The shared CIFAR-100 data and optimizer recipe (teacher and student runs)."""
    c = base_config()
    c.data.name = "cifar100"
    c.data.augment = "crop_flip"
    c.data.augment_pixels = 4
    c.data.mean = (0.5071, 0.4865, 0.4409)
    c.data.std = (0.2673, 0.2564, 0.2762)
    c.batch_size = batch_size
    c.eval_batch_size = 500
    c.num_steps = epochs * CIFAR_TRAIN_EXAMPLES // batch_size
    c.optimizer.learning_rate = 0.05
    c.optimizer.schedule = "step"
    c.optimizer.decay_fractions = (150 / 240, 180 / 240, 210 / 240)
    c.optimizer.weight_decay = 5e-4
    c.log_every = 200
    c.eval_every = c.checkpoint_every = CIFAR_TRAIN_EXAMPLES // batch_size * 10
    return c


def lm_recipe(c: ml_collections.ConfigDict, *, runlocal: bool = False) -> None:
    """Sets the LM demos' shared data and optimizer recipe on `c` in place
    (configs/lm_kd.py, lm_xtok.py, lm_hf_kd.py): `pystdlib`'s first 300 files, batch 16
    (eval 64), 600 AdamW steps at peak 3e-3 after 30 warm-up steps, weight decay 0.01,
    gradient clip 1.0, logs every 100 steps, eval and checkpoints every 300; `runlocal`:
    120 files and 150 steps, logs every 50, eval and checkpoints every 75."""
    c.data.name = "pystdlib"
    c.data.max_documents = 120 if runlocal else 300  # the first files in path order
    c.batch_size = 16
    c.eval_batch_size = 64
    c.num_steps = 150 if runlocal else 600
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip = 1.0
    c.log_every = 50 if runlocal else 100
    c.eval_every = c.checkpoint_every = 75 if runlocal else 300
