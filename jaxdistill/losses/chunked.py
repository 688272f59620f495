"""Logit terms of a language model, chunk by chunk over the sequence.

A naive KD step on a decoder holds `[B, L, V]` float32 logits of both models and their
softmaxes. Here each chunk of `size` positions goes hidden state -> each model's output head
-> every per-position function (loss terms and metrics) -> weighted sum, inside
`jax.checkpoint`, and a `lax.scan` adds the chunks up: the forward pass keeps one chunk's
logits at a time and the backward pass recomputes them, so the loss needs memory for a chunk,
not the sequence (the idea of Liger Kernel's fused linear cross-entropy and of MaxText's
vocabulary tiling, for every divergence at once). The results equal the naive form's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

HIDDEN = "hidden"  # the feature holding a decoder's final hidden states (its head's input)


class Head(NamedTuple):
    """A model's output head as a pure function: `apply(variables, hidden) -> logits`."""

    apply: Callable[[Any, jax.Array], jax.Array]
    variables: Any


class LogitChunks(NamedTuple):
    """What the chunked logit terms need: the student's final hidden states [B, L, D] and
    head; the teacher's hidden states and head, or its logits [B, L, V] (from a teacher
    sub-mesh), or neither (no teacher); targets and weights [B, L]; the chunk length; or the
    teacher's stored top-k entries (`losses.sparse_kd.TeacherEntries`, [B, L, k])."""

    student_hidden: jax.Array
    student_head: Head
    teacher_hidden: jax.Array | None
    teacher_head: Head | None
    teacher_logits: jax.Array | None
    targets: jax.Array
    weights: jax.Array
    size: int
    teacher_entries: Any = None


class ChunkViews(NamedTuple):
    """One chunk's logits and targets, the fields a per-position function reads."""

    student_logits: jax.Array
    teacher_logits: jax.Array | None
    labels: jax.Array
    teacher_entries: Any = None  # a token store's entries of the chunk (teacher_logits None)


PerPosition = Callable[[ChunkViews], jax.Array]  # -> values shaped like `labels`


def check_chunk_size(size: int, seq_len: int, field: str) -> None:
    """Raises a ValueError naming `field` unless 0 (off) or a divisor of `seq_len`."""
    if size < 0 or (size and seq_len % size):
        raise ValueError(f"{field} ({size}) must be 0 (no chunking) or divide the sequence "
                         f"length {seq_len}; e.g. {_divisor_near(seq_len, size if size > 0 else 128)}")


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


def _split(x: jax.Array, size: int) -> jax.Array:
    """[B, L, ...] -> [L // size, B, size, ...] (the scan axis first, batch kept whole)."""
    b, length = x.shape[:2]
    return jnp.swapaxes(x.reshape(b, length // size, size, *x.shape[2:]), 0, 1)


def weighted_sums(fns: Sequence[PerPosition], chunks: LogitChunks) -> jax.Array:
    """[len(fns)] float32: for each function, sum over positions of value * weight."""
    has_teacher = chunks.teacher_head is not None or chunks.teacher_logits is not None
    teacher_side = (chunks.teacher_hidden if chunks.teacher_head is not None
                    else chunks.teacher_logits)
    xs = {"student": _split(chunks.student_hidden, chunks.size),
          "targets": _split(chunks.targets, chunks.size),
          "weights": _split(chunks.weights.astype(jnp.float32), chunks.size)}
    if has_teacher:
        xs["teacher"] = _split(teacher_side, chunks.size)
    if chunks.teacher_entries is not None:
        xs["entries"] = jax.tree.map(lambda a: _split(a, chunks.size), chunks.teacher_entries)

    @jax.checkpoint
    def chunk(s_vars, t_vars, x):
        s_logits = chunks.student_head.apply(s_vars, x["student"])
        t_logits = None
        if has_teacher:
            t_logits = (chunks.teacher_head.apply(t_vars, x["teacher"])
                        if chunks.teacher_head is not None else x["teacher"])
            t_logits = jax.lax.stop_gradient(t_logits)
        views = ChunkViews(s_logits, t_logits, x["targets"], x.get("entries"))
        return jnp.stack([jnp.sum(fn(views).astype(jnp.float32) * x["weights"]) for fn in fns])

    t_vars = chunks.teacher_head.variables if chunks.teacher_head is not None else None

    def body(total, x):
        return total + chunk(chunks.student_head.variables, t_vars, x), None

    total, _ = jax.lax.scan(body, jnp.zeros((len(fns),), jnp.float32), xs)
    return total
