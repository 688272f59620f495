"""Preemption notices (SIGTERM): finish the current step, checkpoint, exit 0.

On a multi-process run every process must stop at the same step, so the decision comes
from JAX's preemption sync point (the coordination service relays the notice, which it
receives as SIGTERM, to all processes). A single process watches SIGTERM itself.
"""

from __future__ import annotations

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
        self._requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
