"""Writes an offline teacher store: `python -m jaxdistill.teacher_store --config=configs/<run>.py
--store=DIR [--top_k=K] [--features=stage3,embedding] [--split=SPLIT] [--log_prob_dtype=D]
[--config.x=y ...]`.

Restores the config's teacher (config.teacher.model / kwargs / checkpoint / dtype), runs it once
in eval mode, jitted and sharded like the trainer, without augmentation (normalisation only),
over config.data.train_split (or --split) in index order, and writes per example its top-k
logits (all classes with --top_k=0), the log-sum-exp of its logits and the named features to
an ArrayRecord store in DIR (new or empty), addressable by example index. For a causal_lm
config it writes a token store instead (`jaxdistill.store.tokens`): per window, the teacher's
top-k log-probabilities and token ids at every position (--log_prob_dtype bfloat16, the
default, or float32; ids in uint16 up to 65,536 tokens) and the log of the mass outside them.
Process 0 writes; multi-process runs take main.py's --distributed flags
(`distributed.define_flags`).

The library lives in `jaxdistill.store` (`TeacherStore`, `dense_teacher_logits`, the fingerprint
checks) and `jaxdistill.store.writer` (`write_store`); its names are also importable from here.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxdistill import distributed, validate

PROG = "jaxdistill.teacher_store"  # the prefix of its one-line errors
if __name__ == "__main__":  # defining the config flag reads the --flagfile's
    validate.exit_if_a_flagfile_is_unreadable(sys.argv, PROG)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_STORE = flags.DEFINE_string("store", None, "Directory to write the store to (new or empty).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Logits kept per example, largest first; 0 = all.")
_FEATURES = flags.DEFINE_list("features", [], "Teacher features to store, by name.")
_SPLIT = flags.DEFINE_string("split", None, "Split to run over; default config.data.train_split.")
_LOG_PROB_DTYPE = flags.DEFINE_enum("log_prob_dtype", None, ["bfloat16", "float32"],
                                    "Token stores (causal_lm): the log-probabilities' dtype; "
                                    "default bfloat16.")
flags.mark_flags_as_required(["config", "store"])

distributed.define_flags()


def __getattr__(name):  # the library's names, imported lazily (JAX must not start before main)
    from jaxdistill import store
    from jaxdistill.store import writer
    if name == "write_store":
        return writer.write_store
    if name in store.__all__:
        return getattr(store, name)
    raise AttributeError(f"module 'jaxdistill.teacher_store' has no attribute '{name}'")


def main(argv):
    del argv  # validate.flags_parser refuses arguments that are not flags
    with validate.reported(PROG):
        validate.check_workdir(_STORE.value, flag="--store", want="a new or empty directory")
        validate.check_config(_CONFIG.value)  # before joining a cluster
        distributed.initialize_from_flags()
    from jaxdistill.store.writer import write_store  # after initialize
    with distributed.fail_fast(), validate.reported(PROG):
        write_store(_CONFIG.value, _STORE.value, top_k=_TOP_K.value,
                    features=tuple(_FEATURES.value), split=_SPLIT.value,
                    log_prob_dtype=_LOG_PROB_DTYPE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=validate.flags_parser(PROG))
