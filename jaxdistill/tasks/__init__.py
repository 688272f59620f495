"""Tasks: what is task-specific about a run, behind one interface (`config.task`).

A task owns the batch schema and its abstract shapes, what the models are called on (image
augmentation lives in the classification task), the targets and the per-position weights
that the objective's weighted mean reduces with, the eval sums and their final metrics, the
metric that ranks checkpoints and the throughput unit. `classification` is the default;
`causal_lm` distils decoder language models token by token; `sentence_embedding` distils
an encoder's pooled sentence embeddings; `cross_tokenizer` distils a decoder LM into one
with another tokenizer.
"""

from __future__ import annotations

from jaxdistill.tasks.base import Task
from jaxdistill.tasks.causal_lm import CausalLM
from jaxdistill.tasks.classification import Classification
from jaxdistill.tasks.cross_tokenizer import CrossTokenizer
from jaxdistill.tasks.sentence_embedding import SentenceEmbedding

TASKS: dict[str, type[Task]] = {"classification": Classification, "causal_lm": CausalLM,
                                "sentence_embedding": SentenceEmbedding,
                                "cross_tokenizer": CrossTokenizer}


def task_class(name: str) -> type[Task]:
    """The task class registered as `name`; a ValueError naming config.task otherwise."""
    if name not in TASKS:
        raise ValueError(f"config.task: unknown task '{name}'; choose one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "CausalLM", "Classification", "CrossTokenizer", "SentenceEmbedding", "Task",
           "task_class"]
