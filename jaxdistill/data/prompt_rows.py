"""One prompt/completion document per window (pure numpy): the layout that on-policy and
sequence-level distillation sample into (`jaxdistill.onpolicy`, `jaxdistill.seqkd`).

Where `packing.pack` fills windows with many documents, `rows` gives each (prompt ids,
completion ids) document its own window of `seq_len` positions: the prompt, then the
completion and the end-of-text id, cut to `seq_len + 1` tokens, then padding. A prompt
longer than `prompt_budget(seq_len)` tokens keeps its first `budget` tokens as the prompt and
the rest joins the completion (the row then continues the docstring, then the body), so every
row's prompt fits the sampler's prompt block of that width, at least `seq_len - budget`
positions are left for its completion, and every document keeps its row. The fields are
`packing.FIELDS`: segment_ids 1 on the row's tokens, positions 0, 1, ..., weights 1 exactly
on the completion's targets (the final end-of-text included when it fits).
"""

from collections.abc import Sequence

import numpy as np

from jaxdistill.data import packing


def prompt_budget(seq_len: int) -> int:
    """The most prompt tokens a row may hold: half the window."""
    return seq_len // 2


def rows(documents: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
         eot_id: int) -> dict[str, np.ndarray]:
    """`packing.FIELDS` as arrays [rows, seq_len], one row per kept document (module doc)."""
    budget = prompt_budget(seq_len)
    fields = {name: [] for name in packing.FIELDS}
    for document in documents:
        if not isinstance(document, tuple):
            raise TypeError("rows: every document must be a (prompt ids, completion ids) pair")
        prompt = np.asarray(document[0], np.int64)
        if not len(prompt):
            raise ValueError("rows: a document has an empty prompt")
        tokens = np.concatenate([prompt, np.asarray(document[1], np.int64), [eot_id]])
        tokens, prompt = tokens[:seq_len + 1], prompt[:budget]
        n, pad = len(tokens) - 1, seq_len + 1 - len(tokens)
        fields["inputs"].append(np.pad(tokens[:-1], (0, pad)))
        fields["targets"].append(np.pad(tokens[1:], (0, pad)))
        fields["segment_ids"].append(np.pad(np.ones(n), (0, pad)))
        fields["positions"].append(np.pad(np.arange(n), (0, pad)))
        fields["weights"].append(np.pad(np.arange(1, n + 1) >= len(prompt), (0, pad)))
    return {name: np.asarray(values, dtype).reshape(-1, seq_len)
            for (name, dtype), values in zip(packing.FIELDS.items(), fields.values())}
