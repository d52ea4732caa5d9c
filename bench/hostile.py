"""Hostile load: one client never hurts the others; memory and descriptors come back after an attack.

Beside one server an observer room times its acks without and during each
attack (every attack within the documented per-connection limits); then
two rounds of written-then-idle rooms, the second's RSS growth what idle
rooms cost. Exit 1 if a target is missed. The attacks, the targets and the
figures: docs/benchmarks.md, "Hostile load".
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import harness
from harness import Attacker, ServerProcess, Session

OBSERVER_CLIENTS = 8
OBSERVER_PERIOD_SECONDS = 0.25
OBSERVER_P99_TARGET_MS = 50.0
BACK_WITHIN = 0.10
HALF_OPEN_CLOSE_SECONDS = 10.0
IDLE_ROOMS_TARGET_BYTES = 20 * 1024 * 1024
MIB = 1024 * 1024


@dataclass
class Config:
    """Sizes and times of one run."""

    window_seconds: float = 4.0
    """The observer's measured window, without and during each attack."""
    warmup_seconds: float = 0.5
    settle_seconds: float = 10.0
    """At most this long after an attack for RSS and descriptors to come back."""
    presence_connections: int = 512
    flood_rooms: int = 32
    churn_room: int = 400
    half_open: int = 1000
    slow_rooms: int = 32
    fetchers: int = 128
    rooms: int = 100_000
    rooms_per_second: float = 1000.0
    """The idle-rooms step writes at a steady rate, so both rounds hold as many rooms in memory at once."""
    grace_seconds: float = 35.0
    rooms_deadline_seconds: float = 600.0


SMOKE = Config(window_seconds=1.0, warmup_seconds=0.2, settle_seconds=2.0, presence_connections=64, flood_rooms=4, churn_room=40,
               half_open=60, slow_rooms=4, fetchers=16, rooms=300, rooms_per_second=1000.0, grace_seconds=1.0,
               rooms_deadline_seconds=60.0)


# -- the attacks ------------------------------------------------------------------------


class Attack:
    """An attack on ``server``: ``begin`` has it under way (connected, sending), ``end`` stops it and says what it did."""

    name = ""
    description = ""

    def __init__(self, server: ServerProcess, config: Config, seconds: float) -> None:
        self.server, self.config, self.seconds = server, config, seconds
        self.sessions: dict[str, Session] = {}

    def start(self, label: str, rooms: int, per_room: int, period: float, **options: Any) -> None:
        """Load workers that connect ``rooms x per_room`` attackers (they read nothing once joined) and send for the attack's time."""
        session = self.sessions[label] = Session(None, per_room, period, server=self.server, mute=True, **options)
        session.connect(rooms, self.seconds, warmup=0.0)
        session.go()

    def begin(self) -> None:
        raise NotImplementedError

    def end(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for label, session in self.sessions.items():
            result = session.collect()
            figures[label] = {key: result[key] for key in ("connections", "updates_sent", "disconnects", "refused", "errors")}
        return figures

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


class PresenceStorm(Attack):
    name = "presence storm"

    def begin(self) -> None:
        count = self.config.presence_connections
        self.description = f"{count} connections in one room ({min(count, 256)} users), each sending transport 10 times a second"
        self.start("storm", 1, count, 0.1, users=256, room_prefix="presence", message="transport")


class UpdateFlood(Attack):
    name = "update flood"

    def begin(self) -> None:
        rooms = self.config.flood_rooms
        self.description = f"{rooms} rooms of 8, every connection sending an update 20 times a second ({rooms * 8 * 20:,} updates/s)"
        self.start("flood", rooms, 8, 0.05, room_prefix="flood")


class ReconnectStorm(Attack):
    name = "reconnect storm"

    def begin(self) -> None:
        members = self.config.churn_room
        self.description = f"one client joining and leaving a room of {members} as fast as it can"
        self.start("room", 1, members, 0.0, users=256, room_prefix="churn", message="none")
        self.attacker = Attacker("churn", {"host": "127.0.0.1", "port": self.server.port, "room": "churn0", "user": "user0",
                                           "seconds": self.seconds})

    def end(self) -> dict[str, Any]:
        figures = super().end()
        churned = self.attacker.result(self.seconds + 30)
        figures["churn"] = churned
        self.description += f": {churned['joins']:,} joins in {churned['seconds']:g} s ({churned['failures']} failed)"
        return figures


class HalfOpen(Attack):
    name = "half-open"

    def begin(self) -> None:
        count = self.config.half_open
        self.description = (f"{count} connections that never finish the HTTP handshake, half silent, half dripping a header byte"
                            " every 0.5 s")
        self.attacker = Attacker("half-open", {"host": "127.0.0.1", "port": self.server.port, "count": count, "seconds": self.seconds,
                                               "close_within": HALF_OPEN_CLOSE_SECONDS})

    def end(self) -> dict[str, Any]:
        result = self.attacker.result(max(self.seconds, HALF_OPEN_CLOSE_SECONDS) + 60)
        self.description += (f": {result['closed_by_server']} of {result['opened']} closed by the server within"
                             f" {max(self.seconds, HALF_OPEN_CLOSE_SECONDS):g} s")
        if result["closed_by_server"]:
            self.description += f" (after p50 {result['close_p50_s']:.1f} s, max {result['close_max_s']:.1f} s)"
        return {"half_open": result}


class SlowReaders(Attack):
    name = "slow readers"

    def begin(self) -> None:
        rooms = self.config.slow_rooms
        self.description = f"{rooms} rooms where 3 clients send 10 updates a second and the fourth stops reading"
        self.start("senders", rooms, 3, 0.1, room_prefix="slow")
        self.start("stalled", rooms, 1, 0.0, room_prefix="slow", user_offset=3, message="none", stall=True, rcvbuf=4096)

    def end(self) -> dict[str, Any]:
        figures = super().end()
        self.description += f": {figures['stalled']['disconnects']} of {self.config.slow_rooms} closed by the server during it"
        return figures


class FetchStorm(Attack):
    name = "fetch storm"

    def begin(self) -> None:
        with Session(None, 256, 1.0, server=self.server, room_prefix="parts") as writers:
            written = writers.step(1, 1.0, warmup=0.0)
        count = self.config.fetchers
        self.description = (f"a room of 256 parts ({written['acks']} acknowledged), then {count} connections sending fetch"
                            " 20 times a second")
        self.start("fetchers", 1, count, 0.05, room_prefix="parts", message="fetch")


ATTACKS: tuple[type[Attack], ...] = (PresenceStorm, UpdateFlood, ReconnectStorm, HalfOpen, SlowReaders, FetchStorm)


# -- the run ---------------------------------------------------------------------------


def _back(value: float, start: float) -> bool:
    return value <= start * (1 + BACK_WITHIN)


def settle(server: ServerProcess, start: tuple[int, int], seconds: float) -> tuple[int, int, float]:
    """RSS and descriptors once both are back within 10% of ``start``, or after ``seconds``; and how long that took."""
    began = time.monotonic()
    while True:
        rss, descriptors = server.rss_bytes(), server.open_descriptors()
        waited = time.monotonic() - began
        if (_back(rss, start[0]) and _back(descriptors, start[1])) or waited >= seconds:
            return rss, descriptors, waited
        time.sleep(0.25)


def observe(observer: Session, config: Config) -> dict[str, Any]:
    figures = observer.step(1, config.window_seconds, warmup=config.warmup_seconds)
    return {key: figures[key] for key in ("ack_p50_ms", "ack_p99_ms", "ack_max_ms", "acks", "updates_sent", "errors", "p99_ms", "disconnects")}


def run_attack(attack_type: type[Attack], server: ServerProcess, observer: Session, config: Config) -> dict[str, Any]:
    """The observer without the attack, then during it; the server's RSS and descriptors at the start, during and after."""
    start = (server.rss_bytes(), server.open_descriptors())
    without = observe(observer, config)
    # The attack sends through the observer's warm-up, window and tail.
    attack = attack_type(server, config, config.warmup_seconds + config.window_seconds + 2.0)
    try:
        attack.begin()
        with harness.Sampler(server) as peak:
            during = observe(observer, config)
        details = attack.end()
    finally:
        attack.close()
    rss, descriptors, waited = settle(server, start, config.settle_seconds)
    result = {
        "attack": attack.name, "description": attack.description, "without": without, "during": during, "details": details,
        "rss_bytes": {"start": start[0], "during": max(peak.rss_bytes, start[0]), "after": rss},
        "descriptors": {"start": start[1], "during": max(peak.descriptors, start[1]), "after": descriptors},
        "settle_seconds": waited,
    }
    result["targets"] = {
        "observer p99 under 50 ms during": during["ack_p99_ms"] < OBSERVER_P99_TARGET_MS,
        "RSS back within 10%": _back(rss, start[0]),
        "descriptors back within 10%": _back(descriptors, start[1]),
    }
    if "half_open" in details:
        result["targets"][f"half-open closed within {HALF_OPEN_CLOSE_SECONDS:g} s"] = details["half_open"]["still_open"] == 0
    return result


def _write_idle_rooms(server: ServerProcess, config: Config, first: int) -> dict[str, Any]:
    """One update in each of ``config.rooms`` rooms numbered from ``first``; then the grace; RSS before, written and after."""
    start = server.rss_bytes()
    parallel, processes = 32, 2
    share = math.ceil(config.rooms / processes)
    attackers = [Attacker("write-rooms", {"host": "127.0.0.1", "port": server.port, "first": first + index * share,
                                          "count": max(0, min(share, config.rooms - index * share)), "parallel": parallel,
                                          "rate": config.rooms_per_second / processes, "seconds": config.rooms_deadline_seconds})
                 for index in range(processes)]
    results = [attacker.result(config.rooms_deadline_seconds + 60) for attacker in attackers]
    written_rss = server.rss_bytes()
    time.sleep(config.grace_seconds)
    return {"written": sum(result["written"] for result in results), "errors": sum(result["errors"] for result in results),
            "write_seconds": max(result["seconds"] for result in results),
            "rss_start": start, "rss_written": written_rss, "rss_idle": server.rss_bytes()}


def idle_rooms(server: ServerProcess, config: Config) -> dict[str, Any]:
    """Two rounds of ``config.rooms`` written-then-idle rooms: the second round's RSS growth is what idle rooms cost.

    The first round pays the high-water mark of the rooms in memory at once
    (written within the grace), which the allocator keeps; a server that
    keeps idle rooms grows again by as much in the second round.
    """
    rounds = [_write_idle_rooms(server, config, first) for first in (0, config.rooms)]
    growth = rounds[1]["rss_idle"] - rounds[0]["rss_idle"]
    written = sum(done["written"] for done in rounds)
    return {"rooms": config.rooms, "rounds": rounds, "written": written, "errors": sum(done["errors"] for done in rounds),
            "grace_seconds": config.grace_seconds, "descriptors_idle": server.open_descriptors(),
            "first_round_bytes": rounds[0]["rss_idle"] - rounds[0]["rss_start"],
            "growth_bytes": growth, "bytes_per_room": growth / max(rounds[1]["written"], 1),
            "targets": {f"idle rooms under {IDLE_ROOMS_TARGET_BYTES // MIB} MB": growth < IDLE_ROOMS_TARGET_BYTES and written == 2 * config.rooms}}


def _verdicts(targets: dict[str, bool]) -> str:
    return "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items())


def report_attack(result: dict[str, Any]) -> str:
    without, during = result["without"], result["during"]
    rss, fds = result["rss_bytes"], result["descriptors"]
    return "\n".join([
        f"{result['attack']}: {result['description']}",
        f"  observer acks  without: p50 {without['ack_p50_ms']:7.2f} ms  p99 {without['ack_p99_ms']:8.2f} ms  max {without['ack_max_ms']:8.2f} ms"
        f"  ({without['acks']}/{without['updates_sent']}, errors {without['errors']})",
        f"                 during:  p50 {during['ack_p50_ms']:7.2f} ms  p99 {during['ack_p99_ms']:8.2f} ms  max {during['ack_max_ms']:8.2f} ms"
        f"  ({during['acks']}/{during['updates_sent']}, errors {during['errors']}, disconnects {during['disconnects']})",
        f"  server RSS {rss['start'] / MIB:.1f} MB at the start, {rss['during'] / MIB:.1f} during, {rss['after'] / MIB:.1f} after;"
        f" descriptors {fds['start']}, {fds['during']}, {fds['after']} (after {result['settle_seconds']:.1f} s)",
        f"  targets: {_verdicts(result['targets'])}",
    ])


def report_rooms(rooms: dict[str, Any]) -> str:
    lines = []
    for number, done in enumerate(rooms["rounds"], 1):
        lines.append(f"idle rooms, round {number}: {done['written']:,} of {rooms['rooms']:,} rooms written (one update each, the writer gone"
                     f" once acknowledged) in {done['write_seconds']:.0f} s, {done['errors']} errors; server RSS {done['rss_start'] / MIB:.1f} MB"
                     f" before, {done['rss_written'] / MIB:.1f} once written, {done['rss_idle'] / MIB:.1f} after {rooms['grace_seconds']:g} s")
    lines += [
        f"  the first round's high-water mark kept: {rooms['first_round_bytes'] / MIB:+.1f} MB; the second round's growth,"
        f" what idle rooms cost: {rooms['growth_bytes'] / MIB:+.1f} MB ({rooms['bytes_per_room']:,.0f} bytes per room); descriptors {rooms['descriptors_idle']}",
        f"  targets: {_verdicts(rooms['targets'])}",
    ]
    return "\n".join(lines)


def run(kind: str, config: Config, attacks: tuple[type[Attack], ...], with_rooms: bool) -> dict[str, Any]:
    with ServerProcess(kind) as server:
        print(f"hostile: {kind} at {server.http_urls[0]}; observer: 1 room of {OBSERVER_CLIENTS} clients, an update each every"
              f" {OBSERVER_PERIOD_SECONDS:g} s, acks timed over {config.window_seconds:g} s windows", flush=True)
        results = []
        with Session(None, OBSERVER_CLIENTS, OBSERVER_PERIOD_SECONDS, server=server, workers=1, room_prefix="observer") as observer:
            observe(observer, config)  # joined, and the server warm, before any attack's start is measured
            for attack_type in attacks:
                result = run_attack(attack_type, server, observer, config)
                print(report_attack(result), flush=True)
                results.append(result)
        rooms = idle_rooms(server, config) if with_rooms else None
        if rooms is not None:
            print(report_rooms(rooms), flush=True)
    targets = {f"{result['attack']}: {name}": ok for result in results for name, ok in result["targets"].items()}
    if rooms is not None:
        targets.update(rooms["targets"])
    return {"server": kind, "config": config.__dict__, "attacks": results, "idle_rooms": rooms, "targets": targets}


def main() -> int:
    parser = harness.arguments(__doc__, smoke="a few seconds of each attack at small counts, 2 x 300 rooms (the test suite)")
    parser.add_argument("--kind", default="loopsync", choices=sorted(harness.KINDS), help="the server (default: loopsync on SQLite)")
    parser.add_argument("--attacks", help="comma-separated, some of: " + ", ".join(a.name.replace(" ", "-") for a in ATTACKS) + "; or none")
    parser.add_argument("--window", type=float, help="seconds of each observer window (default 4)")
    parser.add_argument("--rooms", type=int, help="rooms of the idle-rooms step (default 100,000; 0 leaves the step out)")
    parser.add_argument("--grace", type=float, help="seconds to wait for the server's idle grace before measuring (default 35)")
    args = parser.parse_args()
    given = {"window_seconds": args.window, "rooms": args.rooms, "grace_seconds": args.grace}
    config = dataclasses.replace(SMOKE if args.smoke else Config(), **{key: value for key, value in given.items() if value is not None})
    attacks = ATTACKS
    if args.attacks == "none":
        attacks = ()
    elif args.attacks:
        by_name = {attack.name.replace(" ", "-"): attack for attack in ATTACKS}
        unknown = [name for name in args.attacks.split(",") if name not in by_name]
        if unknown:
            parser.error(f"unknown attack {unknown[0]!r} (known: {', '.join(by_name)})")
        attacks = tuple(by_name[name] for name in args.attacks.split(","))
    started = time.monotonic()
    figures = run(args.kind, config, attacks, with_rooms=config.rooms > 0)
    missed = [name for name, ok in figures["targets"].items() if not ok]
    figures["seconds"] = time.monotonic() - started
    harness.write_json(args.json, figures)
    print(f"{len(figures['targets']) - len(missed)} of {len(figures['targets'])} targets met in {figures['seconds']:.0f} s"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
