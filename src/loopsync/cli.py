"""The ``loopsync`` command: ``serve`` runs the server, ``client`` the headless client, ``conformance`` the protocol's kit.

Exit codes: 0 ok, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .document import SOUNDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopsync", description="A collaborative loop with independent clocks.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the sync server and the web client")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    serve.add_argument("--store", default="sqlite", metavar="sqlite|memory|postgresql://USER@HOST/DB",
                       help="where Shared Data lives (default sqlite); a PostgreSQL URL makes this server a node of a cluster (with --bus)")
    serve.add_argument("--bus", metavar="redis://HOST:PORT", help="the cluster's Redis (with --store postgresql://...)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="run N node processes sharing the port (cluster mode only; default 1)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --workers' processes: listen with SO_REUSEPORT
    serve.add_argument("--data", type=Path, default=Path("data"), help="directory of the SQLite file (default ./data)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept WebSocket connections from pages of this origin, e.g. https://example.org (repeatable); "
                            "the server's own origin and clients that send no Origin are always accepted")

    client = commands.add_parser("client", help="run the headless client")
    client.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="server WebSocket URL")
    client.add_argument("--room", default="demo", help="room to join (default demo)")
    client.add_argument("--user", default=os.environ.get("LOOPSYNC_USER"), help="your user name (default $LOOPSYNC_USER)")
    client.add_argument("--bpm", type=float, default=120.0, help="your tempo (default 120)")
    client.add_argument("--lead", type=float, default=0.05, help="seconds before Loop Start to sync (default 0.05)")
    client.add_argument("--sound", choices=SOUNDS, default="kick", help="your part's sound (default kick)")
    client.add_argument("--paused", action="store_true", help="start paused")
    client.add_argument("--json", action="store_true", help="print every event as a JSON line")
    client.add_argument("--steps", action="store_true", help="print a line per step, not per loop")
    client.add_argument("--toggle", type=int, action="append", default=[], metavar="STEP", help="toggle a step of your part at start (repeatable)")
    client.add_argument("--loops", type=int, default=0, help="stop after this many loops (default: run until quit)")

    conformance = commands.add_parser("conformance", help="play the protocol's conformance scenarios against a server")
    conformance.add_argument("url", nargs="?", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8765/ws")
    conformance.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this scenario (repeatable)")
    conformance.add_argument("--json", action="store_true", help="print one JSON object per scenario, then a summary object")
    conformance.add_argument("--restart-command", metavar="CMD", help="a shell command that restarts the server, for the scenarios that need it")
    conformance.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait for each expected frame (default 5)")
    conformance.add_argument("--scenarios", type=Path, default=None, metavar="DIR", help="play the scenario files of this directory instead of the kit's")
    conformance.add_argument("--list", action="store_true", help="list the scenarios and exit")
    conformance.add_argument("--transcript", metavar="NAME", help="print a scenario as an exchange of frames and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loopsync`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        problem = _serve_usage_problem(args)
        if problem:
            parser.error(problem)
        if args.workers > 1:
            from .workers import main_workers

            return main_workers(args, sys.argv[1:] if argv is None else argv)
        from .server import main_serve

        return main_serve(host=args.host, port=args.port, store=args.store, data_dir=args.data, allowed_origins=tuple(args.allow_origin),
                          bus=args.bus, reuse_port=args.worker)
    if args.command == "conformance":
        from .conformance import main_conformance

        return main_conformance(args)
    if not args.user:
        parser.error("client needs a user name: --user NAME or LOOPSYNC_USER=NAME")
    from .client import main_client

    return main_client(args)


def _serve_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``serve``'s options, in a sentence, or ``None``."""
    clustered = args.store.startswith(("postgresql://", "postgres://"))
    if not clustered and args.store not in ("sqlite", "memory"):
        return f"--store must be sqlite, memory or a postgresql:// URL, got {args.store!r}"
    if clustered and not args.bus:
        return "a cluster node needs its bus too: --store postgresql://... goes with --bus redis://HOST:PORT"
    if args.bus and not clustered:
        return "--bus is for cluster nodes: give it with --store postgresql://USER@HOST/DB"
    if args.bus and not args.bus.startswith(("redis://", "rediss://", "unix://")):
        return f"--bus must be a redis:// URL, got {args.bus!r}"
    if args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if args.workers > 1 and not clustered:
        return (f"--workers {args.workers} needs cluster mode (--store postgresql://... --bus redis://...): "
                f"processes on one {args.store} store would not see each other's updates")
    return None


if __name__ == "__main__":
    sys.exit(main())
