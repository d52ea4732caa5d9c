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
    serve.add_argument("--store", choices=("sqlite", "memory"), default="sqlite", help="where Shared Data lives (default sqlite)")
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
        from .server import main_serve

        return main_serve(host=args.host, port=args.port, store=args.store, data_dir=args.data, allowed_origins=tuple(args.allow_origin))
    if args.command == "conformance":
        from .conformance import main_conformance

        return main_conformance(args)
    if not args.user:
        parser.error("client needs a user name: --user NAME or LOOPSYNC_USER=NAME")
    from .client import main_client

    return main_client(args)


if __name__ == "__main__":
    sys.exit(main())
