#!/usr/bin/env python3
"""Starts an N-process jaxdistill run on this machine, each process with K devices.

  python launch/local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/digits_kd.py:tiny --workdir=/tmp/digits_2x2

Everything after `--` goes to `python -m jaxdistill.main` unchanged. Each process gets
`--distributed=explicit --coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=I` (PORT: a free port unless --port is given) and, on CPU (the default),
`XLA_FLAGS=--xla_force_host_platform_device_count=K` (other XLA_FLAGS are kept), so the
run sees N*K devices. With --platform=cuda process I drives GPUs I*K .. I*K+K-1
(`--local_device_ids`). Output lines are prefixed with `[I]`. The launcher waits for all;
as soon as one fails it stops the others (SIGTERM, then SIGKILL after --grace seconds)
and exits with that process's status. Ctrl-C stops them all.

N x K CPU devices train bit for bit like 1 x (N*K) launched here (`--num_processes=1`):
both reduce across devices with gloo. A plain single-process run (no launcher) uses XLA's
in-process collectives, which sum in another order, so it matches only to float rounding.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

GPU_PLATFORMS = ("cuda", "rocm", "gpu")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(base: dict, devices_per_process: int, platform: str) -> dict:
    env = dict(base)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
    if platform not in GPU_PLATFORMS:
        flags += f" --xla_force_host_platform_device_count={devices_per_process}"
    env["XLA_FLAGS"] = " ".join(flags.split())
    if platform:
        env["JAX_PLATFORMS"] = platform
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
    stream.close()


def _stop(procs, grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(num_processes: int, devices_per_process: int, main_args: list[str], *,
           port: int = 0, platform: str = "cpu", python: str = sys.executable,
           grace: float = 10.0, out=None) -> int:
    """Runs the processes to completion; returns 0 or the first failing exit status."""
    out = out or sys.stdout
    address = f"127.0.0.1:{port or free_port()}"
    env = child_env(os.environ, devices_per_process, platform)
    lock = threading.Lock()
    procs, pumps = [], []
    for i in range(num_processes):
        cmd = [python, "-u", "-m", "jaxdistill.main", *main_args, "--distributed=explicit",
               f"--coordinator_address={address}", f"--num_processes={num_processes}",
               f"--process_id={i}"]
        if platform in GPU_PLATFORMS:  # process i drives GPUs i*K .. i*K+K-1
            ids = range(i * devices_per_process, (i + 1) * devices_per_process)
            cmd.insert(-1, f"--local_device_ids={','.join(map(str, ids))}")
        if i == 0:
            with lock:
                out.write(f"[launch] {num_processes} x {devices_per_process} devices, "
                          f"coordinator {address}; process 0: {shlex.join(cmd)}\n")
                out.flush()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, bufsize=1)
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", out, lock), daemon=True)
        t.start()
        pumps.append(t)

    status = 0
    try:
        running = set(range(num_processes))
        while running:
            for i in sorted(running):
                code = procs[i].poll()
                if code is None:
                    continue
                running.discard(i)
                if code != 0 and status == 0:
                    status = code if code > 0 else 128 - code  # killed by signal -code
                    with lock:
                        out.write(f"[launch] process {i} exited with status {code}; "
                                  f"stopping the others\n")
                        out.flush()
                    _stop(procs, grace)
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, grace)
        status = status or 130
    for t in pumps:
        t.join(timeout=5)
    return status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        ours, theirs = argv[:split], argv[split + 1:]
    else:
        ours, theirs = argv, []
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="python launch/local.py [options] -- --config=... --workdir=... [main flags]")
    parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
    parser.add_argument("--devices_per_process", type=int, default=1,
                        help="devices per process: host CPU devices (XLA_FLAGS), or with "
                             "--platform=cuda the GPUs each process drives")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--platform", default="cpu",
                        help="JAX_PLATFORMS for the processes: cpu (default), cuda or rocm "
                             "(process I gets GPUs I*K..I*K+K-1), '' leaves it unset")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping the others")
    args = parser.parse_args(ours)
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    if not theirs:
        parser.error("give the jaxdistill.main flags after '--', e.g. "
                     "-- --config=configs/digits_kd.py:tiny --workdir=/tmp/run")
    return launch(args.num_processes, args.devices_per_process, theirs, port=args.port,
                  platform=args.platform, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
