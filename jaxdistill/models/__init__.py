"""Flax NNX model zoo: ``build_model(name, ...)`` returns a model called as
``logits, features = model(x, train=False, rngs=None)``; see ``registry`` for the contract.

Importing the architecture modules registers their names.
"""

from jaxdistill.models import cnn, mlp, resnet, vit, wrn  # noqa: F401  (register models)
from jaxdistill.models.registry import build_model, model_names

__all__ = ["build_model", "model_names"]
