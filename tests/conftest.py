"""Test setup: 8 host CPU devices (set before JAX initialises), a private data dir, and
helpers that load configs from `configs/`."""

import importlib.util
import os
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # 8 devices, unless a test's subprocess asked for its own count (e.g. a 1-device
    # reference run that imports this module: appending 8 would override its 1)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
# The suite's programs are tiny, so LLVM's optimisation passes are most of their compile
# time and compiling most of the suite's time: tests compile at backend optimisation level
# 0 (a third less CPU). Results are compared with tolerances, or between runs made with the
# same flags (subprocesses get them through `device_env`); benchmarks and real runs keep
# XLA's default level.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXDISTILL_DATA_DIR", tempfile.mkdtemp(prefix="jaxdistill_data_"))
# One persistent compilation cache for the session: xdist workers and the runs that tests
# start as subprocesses (faults, multi-host, benchmarks) inherit it, so a program that many
# tests compile (the same tiny train step) is compiled once. JAX keys entries by program,
# backend and flags, so a hit is the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxdistill_jit_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_env(devices: int, **extra) -> dict:
    """os.environ for a subprocess with `devices` host CPU devices, the suite's other XLA
    flags kept, plus `extra` variables."""
    flags = [f for f in os.environ["XLA_FLAGS"].split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), **extra}


def set_fields(config, **fields):
    """Sets dotted fields ("optimizer.schedule") of a locked config in place; returns it."""
    for key, value in fields.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def load_config(name: str, arg: str | None = None):
    """`get_config(arg)` of configs/<name>.py, locked as the CLI locks it."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config
