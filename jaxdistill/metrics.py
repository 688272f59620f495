"""Run metrics: a progress line on stdout, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes; the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import time

import jax

from jaxdistill.run_record import write_atomically


def format_duration(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(step: int, total: int, scalars: dict[str, float], items_per_second: float,
                  eta_seconds: float, unit: str = "examples") -> str:
    """E.g. `step 100/1000 | loss 0.512 ce 0.31 kd 0.20 | lr 0.1 | 4,210 ex/s | ETA 0m21s`
    (`tok/s` when the `unit` is tokens)."""
    lr = scalars.get("learning_rate")
    names = sorted((k for k in scalars if k != "learning_rate"), key=lambda k: (k != "loss", k))
    terms = " ".join(f"{k} {scalars[k]:.4g}" for k in names)
    parts = [f"step {step}/{total}", terms]
    if lr is not None:
        parts.append(f"lr {lr:.3g}")
    eta = format_duration(eta_seconds) if items_per_second > 0 else "-"
    parts += [f"{items_per_second:,.0f} {'tok' if unit == 'tokens' else 'ex'}/s", f"ETA {eta}"]
    return " | ".join(parts)


def _record_step(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line that is not a record (torn by a kill)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricWriter:
    """Appends `{"step", "split", ...scalars}` records to metrics.jsonl and TensorBoard.

    A resumed run calls `drop_after(step)` before its first write: the records of the steps
    it trains again leave metrics.jsonl, and its TensorBoard event file starts with
    `purge_step=step + 1`, so TensorBoard hides the older events past `step` (event files
    are append-only: those events stay on disk)."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tensorboard_dir = os.path.join(workdir, "tensorboard")
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._tb = self._purge_step = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(self._path, "a")  # noqa: SIM115 (closed in close())

    def drop_after(self, step: int) -> None:
        """Removes metrics.jsonl's records of steps after `step` and the lines a killed run
        left torn (an atomic rewrite, only if something goes), and has TensorBoard hide its
        events past `step`."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        self._jsonl.close()
        with open(self._path) as f:
            lines = f.readlines()
        kept = [line.rstrip("\n") + "\n" for line in lines
                if (s := _record_step(line)) is not None and s <= step]
        if kept != lines:
            write_atomically(self._path, "".join(kept))
        self._jsonl = open(self._path, "a")  # noqa: SIM115 (closed in close())

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self._tensorboard_dir, purge_step=self._purge_step)
        for key, value in scalars.items():
            self._tb.add_scalar(f"{split}/{key}", value, step)

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
