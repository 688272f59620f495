"""Flax NNX model zoo: ``build_model(name, ...)`` returns an image classifier called as
``logits, features = model(x, train=False, rngs=None)`` or a token model (``input_kind``) with
per-position logits; see ``registry`` for the contract and ``partitioning`` for the logical axis
names the decoder's parameters carry.

Importing the architecture modules registers their names.
"""

from jaxdistill.models import bert, cnn, decoder, gpt2, mlp, resnet, vit, wrn  # noqa: F401  (register models)
from jaxdistill.models.partitioning import logical_axes
from jaxdistill.models.registry import build_model, input_kind, model_names

__all__ = ["build_model", "input_kind", "logical_axes", "model_names"]
