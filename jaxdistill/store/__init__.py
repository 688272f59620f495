"""The offline teacher store: a frozen teacher's outputs on a split, written once, read by index.

KD without running the teacher every step. `jaxdistill.teacher_store` (the command) runs the
teacher once over a split and writes, per example, its top-k logits, the log-sum-exp of all its
logits (and of the logits outside the top k) and optionally named features, in ArrayRecord files
addressable by example index. The trainer reads them back through the data layer's
`extra_fields` hook (`TeacherStore.lookup`) and rebuilds dense teacher logits in the step
(`dense_teacher_logits`). See `format` for the on-disk layout and the fingerprint. A language
model's store (`tokens`: `TokenStore`) keeps the teacher's top-k log-probabilities at every
position, read by the sparse KD terms of `jaxdistill.losses.sparse_kd`. The writer
(`store.writer.write_store`) builds a whole run, so it is imported from its module: this
package stays importable by the run setup and the step.
"""

from jaxdistill.store.dense import dense_teacher_logits, teacher_outputs_from_batch, topk_entries
from jaxdistill.store.format import (
    FIELD_PREFIX,
    StoreLayout,
    TeacherStore,
    check_config,
    check_store,
    expected_fingerprint,
    expected_source,
    fingerprint,
    teacher_sha256,
)
from jaxdistill.store.tokens import TokenStore, TokenStoreLayout, open_store

__all__ = [
    "FIELD_PREFIX",
    "StoreLayout",
    "TeacherStore",
    "TokenStore",
    "TokenStoreLayout",
    "check_config",
    "check_store",
    "dense_teacher_logits",
    "expected_fingerprint",
    "expected_source",
    "fingerprint",
    "open_store",
    "teacher_outputs_from_batch",
    "teacher_sha256",
    "topk_entries",
]
