"""What an update costs the server, counted in instructions: loopsync against the relay and the floor, same run, same load.

Each server runs under valgrind's callgrind (user space only) while the
fan-out load drives it, once for a short and once for a long window: the
difference over the updates more is one update's cost, without start-up.
The count repeats from run to run where the fan-out's times do not. Needs
``valgrind``. docs/benchmarks.md, "Instructions per update".
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness

ROOMS = 10
PER_ROOM = 4
PERIOD_SECONDS = 1.0
"""One update a second per client: under callgrind a server runs some 50
times slower, and this keeps each well below saturation, where the counts
would start to include the cost of falling behind."""
SERVERS = ("relay", "floor", "loopsync-memory", "loopsync")


def _instructions(kind: str, seconds: float) -> tuple[int, int]:
    """Run ``kind`` under callgrind for a ``seconds`` sending window: (instructions, updates sent)."""
    with tempfile.TemporaryDirectory() as directory:
        counts = Path(directory) / "callgrind.out"
        wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}", "--dump-instr=no", "--quiet")
        figures = harness.run_load(kind, ROOMS, PER_ROOM, PERIOD_SECONDS, seconds, wrapper, warmup=0.0)  # the difference of two windows leaves out start-up
        if figures["deliveries"] < figures["deliveries_expected"] or figures["errors"]:
            raise RuntimeError(f"{kind} lost deliveries under callgrind: {harness.row(figures)}")
        for line in counts.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]), int(figures["updates_sent"])
    raise RuntimeError(f"callgrind wrote no total for {kind}")


def per_update(kind: str, short_seconds: float, long_seconds: float) -> dict[str, Any]:
    """Instructions of one update in ``kind``'s server: the long run's count minus the short one's, per update more."""
    short_count, short_updates = _instructions(kind, short_seconds)
    long_count, long_updates = _instructions(kind, long_seconds)
    return {"server": kind, "updates": long_updates - short_updates,
            "instructions_per_update": (long_count - short_count) / (long_updates - short_updates)}


def main() -> int:
    parser = harness.arguments(__doc__, smoke="short windows (for the test suite)")
    parser.add_argument("--servers", help=f"comma-separated, the baseline first (default: {','.join(SERVERS)})")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("bench/instructions.py needs valgrind (Debian: apt-get install valgrind).", file=sys.stderr)
        return 2
    short_seconds, long_seconds = (1.0, 3.0) if args.smoke else (5.0, 25.0)
    servers = tuple(args.servers.split(",")) if args.servers else ("floor", "loopsync") if args.smoke else SERVERS
    if not set(servers) <= set(SERVERS):
        parser.error(f"--servers: some of {', '.join(SERVERS)}, the baseline first")
    print(f"instructions per update under callgrind: rooms of {PER_ROOM}, {ROOMS * PER_ROOM} clients, one update per client"
          f" every {PERIOD_SECONDS:g} s; a {short_seconds:g} s and a {long_seconds:g} s run per server", flush=True)
    rows = []
    for kind in servers:
        row = per_update(kind, short_seconds, long_seconds)
        rows.append(row)
        baseline = rows[0]["instructions_per_update"]
        print(f"  {kind:<15} {row['instructions_per_update']:>9,.0f} instructions/update"
              f"  {row['instructions_per_update'] / baseline:5.2f}x the {servers[0]:<6}  ({row['updates']} updates counted)", flush=True)
    by_kind = {row["server"]: row["instructions_per_update"] for row in rows}
    if "loopsync" in by_kind and "floor" in by_kind:
        print(f"  loopsync / floor, instructions per update: {by_kind['loopsync'] / by_kind['floor']:.2f}x"
              f" (the fan-out target, 0.95 of the floor's deliveries, needs at most {1 / 0.95:.2f}x)")
    harness.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
