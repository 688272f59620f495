"""Joining a multi-process (multi-host) run: `initialize(...)` before any other JAX call.

Three modes (`--distributed`, one of the flags `define_flags` gives every command that can
join a run: `jaxdistill.main`, `jaxdistill.teacher_store`):

- ``off`` (default): one process, nothing to join; the offline demo needs nothing.
- ``auto``: JAX's cluster auto-detection (`jax.distributed.initialize()` with no
  coordinator arguments) on Cloud TPU VM pods, SLURM (`srun`), Open MPI and GKE. Any
  explicit value given (address, process count, id, local device ids) overrides the
  detected one.
- ``explicit``: `coordinator_address` (host:port of process 0), `num_processes` and
  `process_id` are all required; used by `launch/local.py` and by clusters JAX does not
  detect.

Failure handling (measured on CPU processes, jax 0.10; see tests/test_multihost.py).
Every process sends heartbeats to the coordination service that process 0 hosts.

- A process dies (killed, OOM, preempted): the service misses its heartbeats for
  `heartbeat_timeout` seconds and ends every other process with "Terminating process
  because the JAX distributed service detected fatal errors. This most likely indicates
  that another task died" (SIGABRT: exit status 134 in a shell). A peer waiting in a
  collective with it may instead see the connection drop at once ("Gloo all-reduce failed:
  ... Connection closed/reset by peer") and leave through `fail_fast` with status 1.
- Process 0 dies: the others lose the service and end at once, with the same message.
- A Python exception in one process: `fail_fast` prints it and ends that process at once
  (status 1); the others follow as above. Without it the failing process would sit in
  JAX's shutdown barrier for `shutdown_timeout` seconds while its peers wait for it in a
  collective.

So no process outlives a dead peer by much more than `heartbeat_timeout`. `init_timeout`
bounds the wait for every process to join; `shutdown_timeout` bounds the barrier at a
normal exit (process 0 finishes last: it writes the summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import traceback

from absl import flags

MODES = ("off", "auto", "explicit")

# Defaults of jaxdistill's flags. JAX's own are 100 s (heartbeat), 300 s (init and
# shutdown); a shorter heartbeat timeout stops a job with a dead peer sooner and costs
# nothing, since heartbeats run on a background thread (compilation, checkpointing and
# long steps do not delay them).
HEARTBEAT_TIMEOUT_S = 60
INIT_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to join the run; `mode` is one of `MODES`. Unset fields are None."""

    mode: str = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S
    init_timeout: int = INIT_TIMEOUT_S
    shutdown_timeout: int = SHUTDOWN_TIMEOUT_S

    def validate(self) -> None:
        """Raises ValueError, naming the flag, for a setting that cannot work."""
        if self.mode not in MODES:
            raise ValueError(f"--distributed={self.mode!r}: expected one of {MODES}")
        given = {name: getattr(self, name) for name in
                 ("coordinator_address", "num_processes", "process_id", "local_device_ids")
                 if getattr(self, name) is not None}
        if self.mode == "off" and given:
            raise ValueError(f"--{', --'.join(given)} given but --distributed=off; pass "
                             "--distributed=explicit (or auto on a TPU pod or under SLURM)")
        if self.mode == "explicit":
            missing = [n for n in ("coordinator_address", "num_processes", "process_id")
                       if n not in given]
            if missing:
                raise ValueError(f"--distributed=explicit needs --{', --'.join(missing)}")
        if self.coordinator_address is not None:
            host, _, port = self.coordinator_address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--coordinator_address={self.coordinator_address!r}: "
                                 "expected host:port, e.g. 10.0.0.2:1234")
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"--num_processes={self.num_processes}: must be >= 1")
        if self.process_id is not None:
            if self.process_id < 0:
                raise ValueError(f"--process_id={self.process_id}: must be >= 0")
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ValueError(f"--process_id={self.process_id} must be below "
                                 f"--num_processes={self.num_processes}")
        for name in ("heartbeat_timeout", "init_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}={getattr(self, name)}: must be > 0 seconds")


def parse_device_ids(text: str | None) -> tuple[int, ...] | None:
    """'0,1,2' -> (0, 1, 2); '' or None -> None."""
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--local_device_ids={text!r}: expected comma-separated integers, "
                         "e.g. 0,1,2,3") from None


def define_flags() -> None:
    """Defines the flags of a multi-process run (`--distributed` and what it takes) on
    absl's FLAGS; a command calls it once at its module top."""
    flags.DEFINE_enum(
        "distributed", "off", MODES,
        "off: one process. auto: join the cluster JAX detects (Cloud TPU VM pod, SLURM srun, "
        "Open MPI). explicit: --coordinator_address, --num_processes, --process_id.")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordination service.")
    flags.DEFINE_integer("num_processes", None, "Processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
    flags.DEFINE_string(
        "local_device_ids", None, "Comma-separated accelerator ids this process uses (GPU); "
        "default: all visible, or under SLURM auto-detection the one at SLURM_LOCALID.")
    flags.DEFINE_integer(
        "heartbeat_timeout", HEARTBEAT_TIMEOUT_S,
        "Seconds without a heartbeat after which a process counts as dead and the others stop.")
    flags.DEFINE_integer("init_timeout", INIT_TIMEOUT_S,
                         "Seconds to wait for every process to join.")
    flags.DEFINE_integer("shutdown_timeout", SHUTDOWN_TIMEOUT_S,
                         "Seconds to wait for every process at exit.")


def settings_from_flags() -> Settings:
    """The `Settings` the parsed flags of `define_flags` describe."""
    f = flags.FLAGS
    return Settings(mode=f.distributed, coordinator_address=f.coordinator_address,
                    num_processes=f.num_processes, process_id=f.process_id,
                    local_device_ids=parse_device_ids(f.local_device_ids),
                    heartbeat_timeout=f.heartbeat_timeout, init_timeout=f.init_timeout,
                    shutdown_timeout=f.shutdown_timeout)


def initialize_from_flags() -> bool:
    """`initialize(settings_from_flags())`, every failure to join a ValueError (a user
    error, for `validate.reported`)."""
    try:
        return initialize(settings_from_flags())
    except RuntimeError as e:
        raise ValueError(str(e)) from None


def _already_initialized() -> bool:
    import jax
    if hasattr(jax.distributed, "is_initialized"):
        return jax.distributed.is_initialized()
    from jax._src import distributed as jax_distributed  # older jax: no public query
    return jax_distributed.global_state.client is not None


def initialize(settings: Settings) -> bool:
    """Joins the run described by `settings`; returns True when it is multi-process.

    Must run before anything else touches JAX's backends (devices, arrays, jit). With
    mode 'off' it does nothing. Raises ValueError for bad settings and RuntimeError when
    'auto' detects no cluster. A coordinator that cannot be reached within `init_timeout`
    ends the process from inside JAX's client (SIGABRT, "Terminating process because the
    JAX distributed service detected fatal errors")."""
    settings.validate()
    if settings.mode == "off":
        return False
    import jax

    if _already_initialized():
        raise RuntimeError("jax.distributed is already initialized in this process")
    # Cross-process collectives between CPU devices need an implementation; gloo (TCP,
    # bootstrapped through the coordination service) is jax 0.10's default, but an
    # older default of None would leave them unimplemented.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    device_ids = settings.local_device_ids
    kwargs = {"coordinator_address": settings.coordinator_address,
              "num_processes": settings.num_processes, "process_id": settings.process_id,
              "local_device_ids": list(device_ids) if device_ids is not None else None,
              "initialization_timeout": settings.init_timeout,
              "heartbeat_timeout_seconds": settings.heartbeat_timeout,
              "shutdown_timeout_seconds": settings.shutdown_timeout}
    log = logging.getLogger("jaxdistill")
    if settings.mode == "explicit":
        # No environment probing: the three values given are the whole truth.
        kwargs["cluster_detection_method"] = "deactivate"
        log.info("joining the run at %s as process %d of %d (waiting up to %d s)",
                 settings.coordinator_address, settings.process_id, settings.num_processes,
                 settings.init_timeout)
    else:
        log.info("joining the run of the detected cluster (waiting up to %d s)",
                 settings.init_timeout)
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:
        if settings.mode == "auto" and ("should be defined" in str(e)
                                        or "must be defined" in str(e)):
            raise RuntimeError(
                "--distributed=auto found no cluster to join (JAX detects Cloud TPU VM pods, "
                "SLURM job steps started with srun, Open MPI and GKE); run under one of "
                "those or use --distributed=explicit with --coordinator_address, "
                f"--num_processes and --process_id ({e})") from None
        raise
    except Exception as e:  # noqa: BLE001 (e.g. XlaRuntimeError for a bad address)
        where = settings.coordinator_address or "the auto-detected coordinator"
        raise RuntimeError(f"could not join the distributed run at {where} within "
                           f"{settings.init_timeout} s: {e}") from None
    log.info(
        "joined distributed run: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


@contextlib.contextmanager
def fail_fast():
    """Ends this process at once when the body fails in a multi-process run.

    An exception that reaches the interpreter's exit would run JAX's shutdown barrier,
    which waits up to `shutdown_timeout` for peers that are themselves blocked in a
    collective waiting for this process: the whole job would hang for minutes. Instead the
    error (traceback, or the `SystemExit` message) is printed with this process's id and
    the process leaves with `os._exit`; its peers then stop within `heartbeat_timeout`
    (at once if they are in a collective with it). Single-process runs are untouched."""
    try:
        yield
    except BaseException as e:  # re-raised unless multi-process
        if isinstance(e, SystemExit) and not e.code:
            raise
        if not _multi_process():
            raise
        import jax
        where = f"process {jax.process_index()} of {jax.process_count()}"
        if isinstance(e, SystemExit):
            message, code = (e.code, 1) if isinstance(e.code, str) else ("", int(e.code))
            if message:
                sys.stderr.write(f"{message} [{where}]\n")
        else:
            traceback.print_exc()
            sys.stderr.write(f"jaxdistill: error: {where} failed: {type(e).__name__}: {e}\n"
                             "(a failed collective usually means another process died first: "
                             "its log has the cause)\n")
            code = 130 if isinstance(e, KeyboardInterrupt) else 1
        sys.stderr.write(f"jaxdistill: {where} exits now with status {code}; the other "
                         "processes stop when they notice (within --heartbeat_timeout)\n")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


def _multi_process() -> bool:
    if not _already_initialized():
        return False
    import jax
    return jax.process_count() > 1
