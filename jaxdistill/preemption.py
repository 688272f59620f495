"""Preemption notices (SIGTERM): finish the current step, checkpoint, exit 0.

On a multi-process run every process must stop at the same step, so the decision comes
from JAX's preemption sync point (the coordination service relays the notice, which it
receives as SIGTERM, to all processes). A single process watches SIGTERM itself; once
a notice has come, further SIGTERMs (repeated notices are normal on preemptible machines)
are ignored, logged while the step finishes and the checkpoint is saved, so the exit status
stays 0.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`reached(step)` is True at the first step (the same on every process) after a
    preemption notice. Call it at every step on every process."""

    def __init__(self):
        self._requested = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._notice)

    def _notice(self, signum, frame):
        if self._requested:  # os.write: a print here could re-enter one in progress
            os.write(2, b"jaxdistill: SIGTERM again while stopping for the first one; ignored\n")
        self._requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def close(self) -> None:
        """Puts the previous SIGTERM handler back, unless a notice came: the process is then
        on its way out and ignores SIGTERM until it exits (SIG_IGN, which Python keeps through
        interpreter shutdown, where it resets its own handlers to the default)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self._requested else self._previous)
        self._previous = None
