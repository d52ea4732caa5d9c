"""``loopsync serve --workers N``: N cluster nodes on one machine, sharing one port.

Each worker is a whole node (``loopsync serve ... --worker``, its own
process, its own event loop and its own node id) that listens with
``SO_REUSEPORT``, so the kernel spreads new connections over them. They
share nothing but PostgreSQL and Redis, exactly like nodes on different
machines, so a worker that dies loses nothing acknowledged: its clients
reconnect and land on another worker. This process only starts them,
prints the URL once they all serve, passes SIGINT and SIGTERM on, and
starts a worker again if one dies.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Final

BANNER: Final = "loopsync is serving at "
RESTART_PAUSE_SECONDS: Final = 1.0


def _worker_argv(argv: list[str], port: int) -> list[str]:
    """``argv`` (the parent's ``serve`` arguments) with one port for all and ``--workers`` replaced by ``--worker``."""
    result: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument in ("--workers", "--port"):
            skip = True
            continue
        if argument.startswith(("--workers=", "--port=")):
            continue
        result.append(argument)
    return [sys.executable, "-m", "loopsync", *result, "--port", str(port), "--worker"]


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``/``port`` with SO_REUSEPORT (port 0: a free one), held until the workers listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved


def main_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` node processes until SIGINT or SIGTERM; the exit code (0 ok, 1 failure)."""
    try:
        reserved = _reserve_port(args.host, args.port)
    except OSError as exc:
        print(f"loopsync cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.", file=sys.stderr, flush=True)
        return 1
    port = reserved.getsockname()[1]
    command = _worker_argv(argv, port)
    stopping = threading.Event()
    workers: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str] | None:
        worker = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line.startswith(BANNER):
            worker.wait()
            return None
        threading.Thread(target=_drain, args=(worker,), daemon=True).start()
        return worker

    def stop(signal_number: int, _frame: object) -> None:
        stopping.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for _ in range(args.workers):
            worker = start()
            if worker is None:
                print("loopsync cannot start: a worker did not start (its log is above).", file=sys.stderr, flush=True)
                stop(signal.SIGTERM, None)
                return 1
            workers.append(worker)
    finally:
        reserved.close()
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{BANNER}http://{url_host}:{port}/ ({args.workers} workers, store: postgresql, bus: redis)", flush=True)
    while not stopping.is_set():
        for index, worker in enumerate(workers):
            if worker.poll() is not None and not stopping.is_set():
                print(f"loopsync: worker {worker.pid} exited with {worker.returncode}; starting another.", file=sys.stderr, flush=True)
                time.sleep(RESTART_PAUSE_SECONDS)
                replacement = start()
                if replacement is not None:
                    workers[index] = replacement
        stopping.wait(0.5)
    stop(signal.SIGTERM, None)  # again: a worker started while the signal came has not had it
    codes = [worker.wait() for worker in workers]
    return 0 if all(code == 0 for code in codes) else 1


def _drain(worker: subprocess.Popen[str]) -> None:
    """Read a worker's stdout so that it never blocks on a full pipe."""
    assert worker.stdout is not None
    for _ in worker.stdout:
        pass
