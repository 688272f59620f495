"""Entry point: `python -m jaxdistill.main --config=configs/<run>.py --workdir=DIR`.

Multi-process runs add `--distributed=auto` (TPU pods, SLURM) or `--distributed=explicit
--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see launch/README.md.

A mistake (in a flag, the config file, any field, the workdir) ends the command with one
line, `jaxdistill: error: <flag or config.field>: <problem>; <fix>`, exit status 1 and the
workdir as it was: the command line is parsed by `validate.flags_parser`, the whole config
checked before the cluster is joined, and every user error below reported the same way
(`validate.reported`).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxdistill import distributed, validate
from jaxdistill.logs import RUN_LOG

if __name__ == "__main__":  # defining the config flag reads the --flagfile's
    validate.exit_if_a_flagfile_is_unreadable(sys.argv)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
flags.mark_flags_as_required(["config", "workdir"])

distributed.define_flags()


def main(argv):
    del argv  # validate.flags_parser refuses arguments that are not flags
    RUN_LOG.quiet(verbose=flags.FLAGS["verbosity"].present)
    with validate.reported():
        if "://" in _WORKDIR.value:  # the trainer writes through os / open(): local paths only
            raise ValueError(f"--workdir={_WORKDIR.value}: URLs are not supported yet; use a "
                             "directory every process sees at the same path (NFS, Filestore, "
                             "a gcsfuse mount)")
        validate.check_workdir(_WORKDIR.value)
        validate.check_config(_CONFIG.value)  # before joining a cluster
        distributed.initialize_from_flags()
    from jaxdistill import experiment  # after initialize: nothing may touch JAX's backends first
    with distributed.fail_fast(), validate.reported():
        experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=validate.flags_parser())
