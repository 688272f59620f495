"""Multi-layer perceptrons on flattened images.

``mlp_teacher`` and ``mlp_student`` are the MNIST nets of Hinton, Vinyals & Dean, "Distilling the
Knowledge in a Neural Network" (2015): 784-1200-1200-10 trained with dropout (0.2 on the input,
0.5 on hidden units; Srivastava et al., JMLR 2014) and 784-800-800-10 without.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.registry import check_call, register


@register("mlp")
@register("mlp_teacher", widths=(1200, 1200), dropout=0.5, input_dropout=0.2)
@register("mlp_student", widths=(800, 800))
class MLP(nnx.Module):
    """ReLU MLP with hidden ``widths`` on ``prod(input_shape)`` inputs and a linear classifier.

    ``input_dropout`` applies to the flattened input, ``dropout`` after every hidden ReLU.
    Features: ``hidden{i}`` (post-ReLU, pre-dropout, i from 1) and ``embedding`` (= the last
    hidden layer).
    """

    INPUT_KIND = "image"

    def __init__(self, widths: Sequence[int] = (512, 512), dropout: float = 0.0,
                 input_dropout: float = 0.0, *, num_classes: int,
                 input_shape: tuple[int, int, int], dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if not widths:
            raise ValueError("MLP needs at least one hidden width")
        for rate in (dropout, input_dropout):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"MLP dropout rates must be in [0, 1), got {rate}")
        self.input_shape = tuple(input_shape)
        self.uses_dropout = dropout > 0 or input_dropout > 0
        sizes = (math.prod(self.input_shape), *widths)
        self.hidden = nnx.List([nnx.Linear(i, o, dtype=dtype, rngs=rngs)
                                for i, o in itertools.pairwise(sizes)])
        self.input_dropout = nnx.Dropout(input_dropout)
        self.dropout = nnx.Dropout(dropout)
        self.fc = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_call(self, x, needs_rngs=train and self.uses_dropout, rngs=rngs)
        h = self.input_dropout(x.reshape(x.shape[0], -1), deterministic=not train, rngs=rngs)
        features = {}
        for i, layer in enumerate(self.hidden, 1):
            h = nnx.relu(layer(h))
            features[f"hidden{i}"] = h
            h = self.dropout(h, deterministic=not train, rngs=rngs)
        features["embedding"] = features[f"hidden{len(self.hidden)}"]
        return self.fc(h).astype(jnp.float32), features
