"""Entry point: `python -m jaxdistill.main --config=configs/<run>.py --workdir=DIR`."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxdistill import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:
        sys.exit(f"jaxdistill: error: {e}")


if __name__ == "__main__":
    app.run(main)
