"""The run state carried from step to step and saved in checkpoints."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything a run carries from step to step (and checkpoints).

    params: trainable pytree {'student': nnx.State, 'aux': {term: nnx.State}} (adapters,
    embedding heads, discriminators of the objective); batch_stats: the student's
    BatchNorm statistics; aux_state: the objective's running state {term: pytree} (e.g.
    CRD's memory banks); masks: the student's pruning masks {parameter path: bool array}
    (`jaxdistill.pruning`), None without pruning.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    aux_state: Any
    masks: Any = None
