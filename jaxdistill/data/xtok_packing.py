"""Paired packing for cross-tokenizer distillation (pure numpy).

The same documents are tokenised twice, by the student's tokenizer and by the teacher's,
with each token's character offsets `[start, end)` in the document's text. A student token
boundary is *aligned* when the student token starts on a character boundary (not inside a
character that an earlier token already covers, as byte-level BPE can split a multi-byte
character) and some teacher token starts at the same character, as the first of the
teacher tokens that share that character. Student position p predicts student token p + 1;
its aligned teacher position is the one that predicts the teacher token starting where
student token p + 1 starts: both models then have read exactly the same text and predict
what follows it. The end-of-text token of each document is aligned with the teacher's.

Windows are filled greedily with pieces of documents, as `packing.pack` does for one
tokenizer, under two budgets at once: `seq_len` student positions and `teacher_seq_len`
teacher positions, so both sequences of a window cover the same text; a piece ends before
an aligned student token (unless no such end fits an empty window). A student piece of
positions [a, b) (inputs s[a:b], targets s[a+1:b+1]) pairs with the teacher positions
whose inputs run from the first teacher token of s[a] to the last but one of s[b]; its
teacher targets inside s[a] (the piece's first input, context for both) have weight 0, so
the teacher's weighted targets cover exactly the text of the student's targets. Fields
per window (`FIELDS` [seq_len], `TEACHER_FIELDS` [teacher_seq_len]):

  inputs, targets, segment_ids, positions, weights   as in `packing` (student tokens)
  teacher_<same five>                                 the teacher's tokens of that text
  align    the window's teacher position aligned with each student position, -1 where
           none is (an unaligned boundary, or padding)
"""

from collections.abc import Sequence

import numpy as np

from jaxdistill.data import packing

FIELDS = {**packing.FIELDS, "align": np.int32}
TEACHER_FIELDS = {f"teacher_{k}": v for k, v in packing.FIELDS.items()}


def teacher_index(student_offsets: np.ndarray, teacher_offsets: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each student token ([n, 2] char offsets), the index of the first teacher token
    ([m, 2]) that starts where it starts, and whether that boundary is aligned (module
    doc); an unaligned token gets the index of its character's first teacher token."""
    s_start = np.asarray(student_offsets, np.int64).reshape(-1, 2)
    t_off = np.asarray(teacher_offsets, np.int64).reshape(-1, 2)
    t_start = t_off[:, 0]
    index = np.searchsorted(t_start, s_start[:, 0], side="left")
    on_char = np.ones(len(s_start), bool)
    on_char[1:] = s_start[:-1, 1] <= s_start[1:, 0]
    t_first = np.ones(len(t_start), bool)
    t_first[1:] = t_off[:-1, 1] <= t_start[1:]
    found = index < len(t_start)
    safe = np.minimum(index, max(len(t_start) - 1, 0))
    aligned = on_char & found & (t_start[safe] == s_start[:, 0]) & t_first[safe]
    return index, aligned


def _document(student_ids, student_offsets, teacher_ids, teacher_offsets, eot_id: int,
              teacher_eot_id: int):
    """Both token sequences with end-of-text appended, the teacher index of each student
    token's start (`ts`, with the end-of-text's), of its end (`te`) and its alignment."""
    s = np.concatenate([np.asarray(student_ids, np.int64), [eot_id]])
    u = np.concatenate([np.asarray(teacher_ids, np.int64), [teacher_eot_id]])
    ts, aligned = teacher_index(student_offsets, teacher_offsets)
    ts = np.concatenate([ts, [len(u) - 1]])
    aligned = np.concatenate([aligned, [True]])
    te = np.concatenate([ts[1:], [len(u)]])
    return s, u, ts, te, aligned


def pack(documents: Sequence[tuple], seq_len: int, teacher_seq_len: int, eot_id: int,
         teacher_eot_id: int) -> dict[str, np.ndarray]:
    """Packs documents, each (student ids, student offsets, teacher ids, teacher offsets),
    in order into paired windows; returns `FIELDS` [windows, seq_len] and `TEACHER_FIELDS`
    [windows, teacher_seq_len] (module doc)."""
    if seq_len < 1 or teacher_seq_len < 1:
        raise ValueError(f"seq_len ({seq_len}) and teacher_seq_len ({teacher_seq_len}) "
                         "must be >= 1")
    windows: list[dict] = []

    def new_window() -> dict:
        w = {k: np.zeros(seq_len, v) for k, v in packing.FIELDS.items()}
        w.update({k: np.zeros(teacher_seq_len, v) for k, v in TEACHER_FIELDS.items()})
        w["align"] = np.full(seq_len, -1, np.int32)
        w.update(used=0, teacher_used=0, segments=0)
        windows.append(w)
        return w

    window = None
    for document in documents:
        s, u, ts, te, aligned = _document(*document, eot_id, teacher_eot_id)
        a, n = 0, len(s) - 1
        while a < n:
            if window is None:
                window = new_window()
            room, t_room = seq_len - window["used"], teacher_seq_len - window["teacher_used"]
            by_teacher = int(np.searchsorted(te, t_room + 1 + ts[a], side="right")) - 1
            b = min(n, a + room, by_teacher)
            ends = np.flatnonzero(aligned[a + 2:b + 2])  # pieces end where a boundary aligns
            if len(ends) and a + 1 + ends[-1] > a:
                b = a + 1 + int(ends[-1])
            elif window["used"]:
                b = a  # no aligned end fits: start a new window
            if b <= a:
                if window["used"] == 0:
                    raise ValueError(f"teacher_seq_len ({teacher_seq_len}) is too short for "
                                     f"the teacher tokens of one student token pair")
                window = None
                continue
            _put(window, s, u, ts, te, aligned, a, b)
            a = b
    out = {k: np.stack([w[k] for w in windows]) if windows else np.zeros((0, seq_len), v)
           for k, v in FIELDS.items()}
    out.update({k: np.stack([w[k] for w in windows]) if windows
                else np.zeros((0, teacher_seq_len), v) for k, v in TEACHER_FIELDS.items()})
    return out


def _put(w: dict, s, u, ts, te, aligned, a: int, b: int) -> None:
    """Writes student positions [a, b) of a document and their teacher positions into
    window `w` as its next segment."""
    w["segments"] += 1
    i, j = w["used"], w["teacher_used"]
    k = b - a
    w["inputs"][i:i + k], w["targets"][i:i + k] = s[a:b], s[a + 1:b + 1]
    w["segment_ids"][i:i + k], w["positions"][i:i + k] = w["segments"], np.arange(k)
    w["weights"][i:i + k] = 1.0
    t0, count = ts[a], max(int(te[b]) - 1 - int(ts[a]), 0)
    w["teacher_inputs"][j:j + count] = u[t0:t0 + count]
    w["teacher_targets"][j:j + count] = u[t0 + 1:t0 + 1 + count]
    w["teacher_segment_ids"][j:j + count] = w["segments"]
    w["teacher_positions"][j:j + count] = np.arange(count)
    w["teacher_weights"][j:j + count] = (np.arange(t0 + 1, t0 + 1 + count) >= ts[a + 1])
    target_pos = ts[a + 1:b + 1] - 1 - t0  # the teacher position predicting each target's start
    ok = aligned[a + 1:b + 1] & (target_pos >= 0) & (target_pos < count)
    w["align"][i:i + k] = np.where(ok, target_pos + j, -1)
    w["used"], w["teacher_used"] = i + k, j + count
