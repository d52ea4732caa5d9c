"""Server fan-out: loopsync against the relay, the floor and y-websocket, the same load in the same run.

Scenarios: ``rooms`` (500 rooms of 4), ``crowd`` (one room of 200),
``cost`` (CPU per delivery against the relay's, the servers taking turns)
and ``ramp`` (the most deliveries/s with p99 under 20 ms, against the
targets). What each measures, and the figures: docs/benchmarks.md, "Server
fan-out".
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import harness
from harness import Sessions, cpu_per_delivery, row, times, warmup_text

BUDGET_MS = 20.0
TARGETS = (("loopsync", "yjs", 2.0), ("loopsync", "floor", 0.95), ("cluster", "yjs", 2.0), ("cluster", "cluster-floor", 0.95))
"""(server, baseline, least ratio of their most deliveries/s under the budget): issue 18's targets, for one process and a cluster node."""
IDLE_KIB_TARGET = 20.0
CLUSTER_KINDS = ("cluster-floor", "cluster", "cluster-2")


def scenario(name: str, rooms: int, per_room: int, period: float, duration: float, kinds: tuple[str, ...],
             warmup: float | None = None) -> list[dict[str, Any]]:
    """One load against each server of ``kinds`` (the relay first), and each one's ratio to the relay."""
    print(f"{name}: {rooms} rooms x {per_room} clients, one update per client every {period:g} s, {duration:g} s"
          f" after {warmup_text(warmup, kinds)}")
    runs = {kind: harness.run_load(kind, rooms, per_room, period, duration, warmup=warmup) for kind in kinds}
    for figures in runs.values():
        print(row(figures))
        figures["scenario"] = name
    relay = runs["relay"]
    for kind in kinds[1:]:
        print(f"  {kind} / relay throughput: {runs[kind]['deliveries_per_s'] / relay['deliveries_per_s']:.2f}"
              f"  cpu per delivery: {times(runs[kind], relay, 'cpu')} (user space {times(runs[kind], relay, 'user')},"
              f" kernel {times(runs[kind], relay, 'system')})")
    return list(runs.values())


def cost(duration: float, kinds: tuple[str, ...], rooms: int = 150, rounds: int = 3, warmup: float | None = None) -> list[dict[str, Any]]:
    """Each server's CPU per delivery at one load under every limit, the servers taking turns ``rounds`` times (the relay first).

    A server that needs k times another's CPU per delivery delivers at most
    1/k of it on the same core; each ratio is the median of the rounds'.
    """
    period = 0.1
    print(f"cost: {rooms} rooms x 4 clients, one update per client every {period:g} s, {rounds} rounds of {duration:g} s"
          f" after {warmup_text(warmup, kinds)}; the servers take turns")
    with Sessions(4, period, kinds) as sessions:  # every server up before the first round
        rounds_rows = [{kind: {**sessions[kind].step(rooms, duration, warmup), "scenario": "cost"} for kind in kinds}
                       for _ in range(rounds)]
    for kind in kinds:
        runs = [by_kind[kind] for by_kind in rounds_rows]
        cpus = ", ".join(f"{cpu_per_delivery(run):.1f}" for run in runs)
        p99s = ", ".join(f"{run['p99_ms']:.1f}" for run in runs)
        median = statistics.median(cpu_per_delivery(run) for run in runs)
        print(f"  {kind:<15} {runs[0]['connections']:>5} conns  CPU per delivery {cpus} µs (median {median:.1f})  p99 {p99s} ms"
              f"  deliveries {sum(run['deliveries'] for run in runs)}/{sum(run['deliveries_expected'] for run in runs)}"
              f"  errors {sum(run['errors'] for run in runs)}")
    for kind in kinds:
        services = rounds_rows[0][kind].get("service_cpu_s", {})
        for name in services:
            per_delivery = [run["service_cpu_s"][name] / max(run["deliveries"], 1) * 1e6 for run in (by_kind[kind] for by_kind in rounds_rows)]
            print(f"  {kind:<15} {name} CPU per delivery {', '.join(f'{value:.1f}' for value in per_delivery)} µs"
                  f" (median {statistics.median(per_delivery):.1f})")
    for kind in kinds[1:]:
        ratios = [cpu_per_delivery(by_kind[kind]) / cpu_per_delivery(by_kind["relay"]) for by_kind in rounds_rows
                  if cpu_per_delivery(by_kind["relay"]) and cpu_per_delivery(by_kind[kind])]  # /proc counts in 10 ms ticks
        if not ratios:
            print(f"  {kind} / relay, CPU per delivery: n/a")
            continue
        median = statistics.median(ratios)
        print(f"  {kind} / relay, CPU per delivery: {median:.2f}x ({', '.join(f'{ratio:.2f}' for ratio in ratios)}),"
              f" so at most {1 / median:.2f} of the relay's deliveries on the same CPU")
    return [by_kind[kind] for by_kind in rounds_rows for kind in kinds]


def ramp(duration: float, kinds: tuple[str, ...], budget_ms: float = BUDGET_MS,
         bisections: int = harness.RAMP_BISECTIONS) -> list[dict[str, Any]]:
    """Find, per server, the most rooms it serves with p99 under ``budget_ms`` and nothing lost (``harness.find_limit``).

    Each client sends 10 updates a second (half the per-connection rate
    limit), so the load grows by connections as in real use. Each server runs
    once for its whole search; the searches take turns, one step each, so a
    slow spell of the shared machine falls on every server alike.
    """
    period = 0.1
    print(f"ramp: rooms of 4 clients, one update per client every {period:g} s, rooms doubled from {harness.RAMP_FIRST_ROOMS}"
          f" then bisected {bisections} times, {duration:g} s per step after {warmup_text(None, kinds)},"
          f" p99 budget {budget_ms:g} ms; the servers take turns")
    rows = []
    searches = {kind: harness.find_limit(budget_ms, bisections) for kind in kinds}
    next_rooms = {kind: next(search) for kind, search in searches.items()}
    with Sessions(4, period) as sessions:
        while next_rooms:
            for kind in list(next_rooms):
                figures = {**sessions[kind].step(next_rooms[kind], duration), "scenario": "ramp"}
                rows.append(figures)
                print(row(figures), flush=True)
                try:
                    next_rooms[kind] = searches[kind].send(figures)
                except StopIteration:
                    del next_rooms[kind]
                    sessions.pop(kind).close()
    summarise_ramp(rows, kinds, budget_ms)
    return rows


def summarise_ramp(rows: list[dict[str, Any]], kinds: tuple[str, ...], budget_ms: float) -> None:
    """Each server's limit, the ratios against the baselines (issue 18's targets marked), and memory per connection."""
    best = harness.limits(rows, budget_ms)
    for kind in kinds:
        if kind in best:
            limit = best[kind]
            print(f"  {kind}: most under the budget: {limit['deliveries_per_s']:,.0f} deliveries/s ({limit['connections']} connections)"
                  f" at p99 {limit['p99_ms']:.2f} ms, {limit['server_cpu_share']:.0%} of a core: {harness.microseconds_per_delivery(limit)}")
    targets = {(kind, baseline): least for kind, baseline, least in TARGETS}
    for kind, baseline in (("loopsync", "relay"), ("loopsync-memory", "relay"), ("floor", "relay"), ("yjs", "relay"),
                           ("loopsync", "floor"), ("loopsync", "yjs"), ("loopsync-memory", "yjs"),
                           ("cluster", "loopsync"), ("cluster", "cluster-floor"), ("cluster-2", "cluster"), ("cluster", "yjs")):
        if kind in best and baseline in best:
            ratio = best[kind]["deliveries_per_s"] / best[baseline]["deliveries_per_s"]
            least = targets.get((kind, baseline))
            verdict = f" (target >= {least:g}: {'met' if ratio >= least else 'MISSED'})" if least else ""
            print(f"  {kind} / {baseline}, most deliveries/s with p99 under {budget_ms:g} ms: {ratio:.{3 if least else 2}f}{verdict}")
    for kind in kinds:
        steps = [figures for figures in rows if figures.get("scenario") == "ramp" and figures["server"] == kind]
        if not steps:
            continue
        idle = steps[0]["kib_per_connection"]  # the first step: every connection just joined, before any load
        failed = [figures for figures in steps if not harness.within_budget(figures, budget_ms)]
        line = f"  {kind}: memory per connection {idle:.1f} KiB after the first joins"
        if kind.startswith("loopsync") or kind in ("cluster", "cluster-2"):
            line += f" (target < {IDLE_KIB_TARGET:g}: {'met' if idle < IDLE_KIB_TARGET else 'MISSED'})"
        if failed:
            worst = max(failed, key=lambda figures: figures["kib_per_connection_loaded"])
            line += (f"; in the {len(failed)} failed (overloaded) steps at most {worst['kib_per_connection_loaded']:.1f} KiB"
                     f" (at the end of the window of {worst['connections']} connections)")
        print(line)


def main() -> int:
    parser = harness.arguments(__doc__, smoke="a few seconds of small load on every server (for the test suite)",
                               long="the full version: longer windows, y-websocket in every scenario, every server in the ramp and the cost"
                                    " scenario, a finer search (seven minutes or more)")
    parser.add_argument("--floor", action="store_true", help="also run the cost scenario in the default run")
    parser.add_argument("--cluster", action="store_true",
                        help="also a node's floor and a cluster of one node and of two (PostgreSQL + Redis, started for the run) in the cost"
                             " scenario and the ramp, with the CPU per delivery of PostgreSQL and Redis")
    parser.add_argument("--plot", type=Path, help="draw the ramp (p99 against deliveries/s) to this .svg or .png (a PNG needs Chromium)")
    parser.add_argument("--from-json", type=Path, metavar="JSON", help="with --plot: draw a run saved with --json, run nothing")
    parser.add_argument("--chromium", default=harness.CHROMIUM, help="the Chromium binary that renders a PNG")
    args = parser.parse_args()
    if args.from_json:
        if not args.plot:
            parser.error("--from-json needs --plot")
        harness.write_svg(harness.ramp_svg(json.loads(args.from_json.read_text())["runs"]), args.plot, args.chromium)
        return 0
    disk = harness.disk_probe(0.5 if args.smoke else 10 if args.long else 3)
    print(harness.disk_row(disk), flush=True)
    clusters = CLUSTER_KINDS if args.cluster else ()
    everyone = ("relay", "floor", "loopsync", "loopsync-memory", "yjs", *clusters)
    if args.smoke:
        rows = scenario("smoke", 5, 4, 0.25, 1.5, everyone, warmup=0.5)
    elif args.long:
        rows = scenario("rooms", 500, 4, 0.5, 10, ("relay", "loopsync", "yjs"))
        rows += scenario("crowd", 1, 200, 2.0, 8, ("relay", "loopsync", "yjs"))
        rows += cost(2, everyone)
        rows += ramp(4, everyone)
    else:
        rows = scenario("rooms", 500, 4, 0.5, 3, ("relay", "loopsync"))
        rows += scenario("crowd", 1, 200, 2.0, 3, ("relay", "loopsync"))
        if args.floor or args.cluster:
            rows += cost(2, ("relay", "floor", "loopsync", *clusters))
        rows += ramp(2, ("relay", "floor", "loopsync", *clusters), bisections=harness.QUICK_RAMP_BISECTIONS)
    harness.write_json(args.json, {"disk": disk, "runs": rows})
    if args.plot:
        harness.write_svg(harness.ramp_svg(rows), args.plot, args.chromium)
    short = [figures for figures in rows if figures["server"].startswith(("loopsync", "cluster"))
             and (figures["deliveries"] < figures["deliveries_expected"] or figures["errors"])]
    for figures in short:
        if figures["server"] in ("cluster", "cluster-2") and not figures["errors"]:
            # docs/scale.md, Overload: a node that fell behind re-reads the room and passes on current parts only.
            print(f"{figures['server']} ({figures['scenario']}, p99 {figures['p99_ms']:.0f} ms): {figures['deliveries']:,} of"
                  f" {figures['deliveries_expected']:,} deliveries: overloaded, its re-reads passed on current parts, not those in between")
    lost = [figures for figures in short if figures["errors"] or figures["server"] not in ("cluster", "cluster-2")]
    if lost:
        print(f"loopsync lost deliveries or answered errors in {len(lost)} runs.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
