"""Run metrics: a progress line on stdout, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes; the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import time

import jax


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


class MetricWriter:
    """Appends `{"step", "split", ...scalars}` records to metrics.jsonl and TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tb.add_scalar(f"{split}/{key}", value, step)

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
