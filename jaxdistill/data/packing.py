"""Packing tokenised documents into fixed-length causal-LM windows (pure numpy).

A document is its token ids followed by the end-of-text id; a document of n + 1 tokens gives
n positions, position p predicting token p + 1 from token p. Positions of all documents, in
order, fill windows of `seq_len` greedily: the windows are the concatenated positions cut
every `seq_len`, the last one padded. A document that crosses a window boundary is split into
pieces that overlap by one token (a piece's last target is the next piece's first input), so
no target is lost. Per window (fields `FIELDS`, each [seq_len]):

  inputs, targets  token ids; `targets[t] == inputs[t + 1]` inside a piece
  segment_ids      1, 2, ... per piece within the window, 0 on padding
  positions        0, 1, ... restarting at each piece (so always < seq_len), 0 on padding
  weights          1.0 where the target is a trained token of the same document, else 0.0

A plain document is a list or 1-D array of ids; a tuple (prompt_ids, completion_ids) is a
prompt/completion document: targets inside the prompt get weight 0, only the completion's
targets and the final end-of-text count. Padding is 0 in every field.
"""

from collections.abc import Sequence

import numpy as np

FIELDS = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "weights": np.float32,
}

Document = Sequence[int] | tuple[Sequence[int], Sequence[int]]


def _tokens_and_weights(document: Document, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids incl. the final end-of-text, per-target weights of length len(ids) - 1)."""
    parts = document if isinstance(document, tuple) else ((), document)
    arrays = [np.asarray(part, np.int64) for part in parts]
    if len(arrays) != 2 or any(a.ndim != 1 for a in arrays):
        raise ValueError("a document is a list or 1-D array of token ids, or a tuple "
                         "(prompt ids, completion ids) of two of them")
    prompt, completion = arrays
    tokens = np.concatenate([prompt, completion, [eot_id]])
    target_index = np.arange(1, len(tokens))  # the token each position predicts
    return tokens, (target_index >= len(prompt)).astype(np.float32)


def pack(documents: Sequence[Document], seq_len: int, eot_id: int) -> dict[str, np.ndarray]:
    """Packs `documents` in order into windows; returns `FIELDS` as arrays [windows, seq_len]."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    inputs, targets, weights, owner = [], [], [], []
    for d, document in enumerate(documents):
        tokens, w = _tokens_and_weights(document, eot_id)
        inputs.append(tokens[:-1])
        targets.append(tokens[1:])
        weights.append(w)
        owner.append(np.full(len(w), d, np.int64))
    n = sum(len(o) for o in owner)
    windows = -(-n // seq_len)
    pad = windows * seq_len - n

    def cut(parts, dtype, fill=0):
        flat = np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype)
        return np.pad(flat, (0, pad), constant_values=fill).reshape(windows, seq_len)

    owner = cut(owner, np.int64, fill=-1)
    starts = np.ones_like(owner, bool)  # a piece starts at column 0 or where the document changes
    starts[:, 1:] = owner[:, 1:] != owner[:, :-1]
    real = owner >= 0
    column = np.broadcast_to(np.arange(seq_len), owner.shape)
    piece_start = np.maximum.accumulate(np.where(starts, column, 0), axis=1)
    return {
        "inputs": cut(inputs, np.int32),
        "targets": cut(targets, np.int32),
        "segment_ids": np.where(real, np.cumsum(starts, axis=1), 0).astype(np.int32),
        "positions": np.where(real, column - piece_start, 0).astype(np.int32),
        "weights": cut(weights, np.float32),
    }
