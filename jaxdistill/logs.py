"""A quiet terminal and a full log: what a run prints, and where library logs go.

By default the terminal shows the run's own lines (progress, eval, stage headers, the table)
and library records at WARNING or above, minus known harmless noise (Orbax's read-only
notices on every teacher load, TFDS's "custom data configuration" notice and progress bars).
Every record at INFO and above, noise included, goes to `<workdir>/log.txt` once the run has
been accepted: until then records wait in memory, so a refused run writes nothing. absl's
`--verbosity` / `-v`, given explicitly, restores its own terminal logging.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import MemoryHandler

import jax

LOG_FILE = "log.txt"
NOISE = ("read_only=True", "Given directory is read only", "Using custom data configuration")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def quiet_library_logs() -> None:
    """absl's records at WARNING or above, without the known noise (`NOISE`): a benchmark's
    quiet terminal (benchmarks keep no log file)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_logger().addFilter(_DropNoise())


class RunLog:
    """The handlers of one command: `quiet()` at start, `to_file(workdir)` once accepted."""

    def __init__(self):
        self._buffer = MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self._buffer.setLevel(logging.INFO)
        self._buffer.setFormatter(logging.Formatter(_FORMAT))

    def quiet(self, verbose: bool) -> None:
        """Terminal at WARNING without the noise (unless `verbose`); INFO kept for the file."""
        import tensorflow_datasets as tfds
        from absl import logging as absl_logging

        logging.getLogger().addHandler(self._buffer)
        if verbose:
            return
        absl_logging.set_verbosity(absl_logging.INFO)  # records reach the file...
        handler = absl_logging.get_absl_handler()
        handler.setLevel(logging.WARNING)  # ...but the terminal sees warnings only
        handler.addFilter(_DropNoise())
        tfds.disable_progress_bar()

    def to_file(self, workdir: str) -> str | None:
        """Starts writing `<workdir>/log.txt` (process 0), with what was held back; a no-op
        unless `quiet()` ran (library use keeps its own logging)."""
        root = logging.getLogger()
        if self._buffer not in root.handlers or self._buffer.target is not None:
            return None
        if jax.process_index() != 0:  # other processes keep nothing
            root.removeHandler(self._buffer)
            return None
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOG_FILE)
        target = logging.FileHandler(path)
        target.setFormatter(logging.Formatter(_FORMAT))
        self._buffer.setTarget(target)
        self._buffer.flush()
        self._buffer.flushLevel = logging.INFO  # from now on every record goes out at once
        return path


RUN_LOG = RunLog()
