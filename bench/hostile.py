"""Hostile load: one client never hurts the others; memory and descriptors come back after an attack.

One server (``loopsync serve`` on SQLite by default, ``--kind``). Beside
it runs a well-behaved **observer**: one room of 8 clients, each sending
its part every 0.25 s, every ack timed (128 acks in a 4 s window, so that
its p99 is not its maximum). Each attack stays within the
documented per-connection limits (burst 40 frames, 20 frames/s; 512
connections and 256 users per room; frames under 64 KiB):

- ``presence storm``: 512 connections in one room (two per user), each
  sending ``transport`` 10 times a second;
- ``update flood``: 32 rooms of 8, every connection sending updates at its
  full rate (20 a second);
- ``reconnect storm``: one client joining and leaving a room of 400 as fast
  as it can;
- ``half-open``: 1,000 TCP connections that never finish the HTTP
  handshake, half silent, half dripping a header byte every 0.5 s; the
  server should close each within ``HALF_OPEN_CLOSE_SECONDS``;
- ``slow readers``: 32 busy rooms (3 clients sending 10 updates a second)
  whose fourth member stops reading (a 4 KiB receive buffer);
- ``fetch storm``: a room holding 256 parts (256 users wrote one each, then
  left), then 128 connections sending ``fetch`` at 20 a second.

For each attack, in the same run: the observer's ack p50/p99/max without
the attack (just before it) and during it; the server's RSS and open
descriptors (``/proc/PID/fd``) at the start, the most seen during, and
after (once both are back within 10% of the start, or after
``--settle`` seconds). Then a separate step: one update in each of
``--rooms`` rooms (100,000, 1,000 a second), each client leaving once acknowledged, and
``--grace`` seconds (the server's idle grace; 35 s); then as many other
rooms again: the second round's RSS growth is what idle rooms cost (the
first pays the high-water mark of the rooms in memory at once).

Targets (exit 1 if one is missed): observer ack p99 under 50 ms during
every attack; RSS and descriptors back within 10% of their start after
every attack; every half-open connection closed by the server within
``HALF_OPEN_CLOSE_SECONDS``; the second round of written-then-idle rooms
under 20 MB once idle. Default: about a minute of attacks, plus the rooms step (its writing
time and its grace); ``--smoke`` a few seconds of each at small counts and
2 x 300 rooms (the test suite).

The load comes from a few processes (``harness.Session`` workers that
read nothing once joined, and this file as ``--attacker``: raw sockets),
so that the generator is not what fills the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import ServerProcess, Session

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


# -- attackers in their own process: raw sockets ------------------------------------------


def _ws_connect(host: str, port: int, path: str, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(harness.handshake(path, f"{host}:{port}"))
    return sock


def _read_until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> bytes:
    while marker not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before {marker!r}")
        buffer += data
    return buffer


def churn(config: dict[str, Any]) -> dict[str, Any]:
    """One client joining a room and leaving as soon as its snapshot comes, again and again until the deadline."""
    host, port = config["host"], config["port"]
    hello = json.dumps({"type": "hello", "v": 1, "room": config["room"], "user": config["user"], "playing": True, "bpm": 120}).encode()
    print("ready", flush=True)
    deadline, joins, failures = time.monotonic() + config["seconds"], 0, 0
    while time.monotonic() < deadline and joins + failures < 1_000_000:
        try:
            with _ws_connect(host, port, "/ws", 5) as sock:
                rest = _read_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)[1]
                sock.sendall(harness.client_frame(0x1, hello))
                _read_until(sock, b'"snapshot"', rest)
                sock.sendall(harness.client_frame(0x8, b"\x03\xe8"))  # close 1000
            joins += 1
        except OSError:
            failures += 1
    return {"joins": joins, "failures": failures, "seconds": config["seconds"]}


class _HalfOpen(asyncio.Protocol):
    """A connection that never finishes its HTTP request; notes when the server closes it."""

    def __init__(self, closed: list[float], drip: bool, opened: float) -> None:
        self.closed, self.drip, self.opened = closed, drip, opened
        self.transport: asyncio.Transport | None = None
        self.dripped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass  # an error page before closing, perhaps: the close is what counts

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.append(time.monotonic() - self.opened)


async def _half_open(config: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    closed: list[float] = []
    clients: list[_HalfOpen] = []
    opened = time.monotonic()
    for number in range(config["count"]):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (config["host"], config["port"]))
        _, client = await loop.create_connection(lambda: _HalfOpen(closed, number % 2 == 1, time.monotonic()), sock=sock)
        clients.append(client)
    print("ready", flush=True)
    deadline = opened + max(config["seconds"], HALF_OPEN_CLOSE_SECONDS)
    while time.monotonic() < deadline and len(closed) < len(clients):
        for client in clients:
            if client.drip and client.transport is not None and not client.transport.is_closing():
                client.transport.write(request[client.dripped % len(request):][:1])
                client.dripped += 1
        await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, opened + config["seconds"] - time.monotonic()))
    still_open = len(clients) - len(closed)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    ordered = sorted(closed)
    return {"opened": len(clients), "closed_by_server": len(ordered), "still_open": still_open,
            "close_p50_s": harness.percentile(ordered, 0.5), "close_max_s": ordered[-1] if ordered else math.nan}


async def _write_rooms(config: dict[str, Any]) -> dict[str, Any]:
    """One update in each of ``count`` rooms, each from its own short connection, ``parallel`` at a time, ``rate`` rooms a second."""
    rooms = iter(enumerate(range(config["first"], config["first"] + config["count"])))
    deadline = time.monotonic() + config["seconds"]
    written = errors = 0

    async def writer() -> None:
        nonlocal written, errors
        for index, number in rooms:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(started + index / config["rate"] - time.monotonic())
            try:
                reader, stream = await asyncio.open_connection(config["host"], config["port"])
                stream.write(harness.handshake("/ws", f"{config['host']}:{config['port']}"))
                await reader.readuntil(b"\r\n\r\n")
                hello = {"type": "hello", "v": 1, "room": f"idle{number}", "user": "writer", "playing": False, "bpm": 120}
                stream.write(harness.client_frame(0x1, json.dumps(hello).encode()))
                stream.write(harness.client_frame(0x1, b'{"type":"update","seq":1,"part":{"sound":"kick","steps":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}'))
                buffer = b""
                while b'"ack"' not in buffer and b'"error"' not in buffer:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                    if not data:
                        break
                    buffer += data
                if b'"ack"' in buffer:
                    written += 1
                else:
                    errors += 1
                stream.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                errors += 1

    print("ready", flush=True)
    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(config["parallel"])))
    return {"written": written, "errors": errors, "seconds": time.monotonic() - started}


class Attacker:
    """This file run as ``--attacker NAME CONFIG`` in its own process: says ``ready``, attacks, prints its figures."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--attacker", name, json.dumps(config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the {name} attacker did not start: {line!r}")

    def result(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("an attacker did not finish in time") from None
        return dict(json.loads(out.strip().splitlines()[-1]))


def _attacker_main(name: str, config: dict[str, Any]) -> dict[str, Any]:
    if name == "churn":
        return churn(config)
    from loopsync.server import event_loop_factory

    job = _half_open(config) if name == "half-open" else _write_rooms(config)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(job)


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
        self.attacker = Attacker("half-open", {"host": "127.0.0.1", "port": self.server.port, "count": count, "seconds": self.seconds})

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
        writers = Session(None, 256, 1.0, server=self.server, room_prefix="parts")
        try:
            written = writers.step(1, 1.0, warmup=0.0)
        finally:
            writers.close()
        count = self.config.fetchers
        self.description = (f"a room of 256 parts ({written['acks']} acknowledged), then {count} connections sending fetch"
                            " 20 times a second")
        self.start("fetchers", 1, count, 0.05, room_prefix="parts", message="fetch")


ATTACKS: tuple[type[Attack], ...] = (PresenceStorm, UpdateFlood, ReconnectStorm, HalfOpen, SlowReaders, FetchStorm)


# -- the run ---------------------------------------------------------------------------


class Sampling:
    """A thread that samples the server's RSS and descriptors every 0.1 s while the observer measures."""

    def __init__(self, server: ServerProcess) -> None:
        self.sampler = harness.Sampler(server)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                self.sampler.sample()
            except OSError:
                return

    def finish(self) -> harness.Sampler:
        self.stop.set()
        self.thread.join()
        return self.sampler


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
        sampling = Sampling(server)
        during = observe(observer, config)
        peak = sampling.finish()
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
        observer = Session(None, OBSERVER_CLIENTS, OBSERVER_PERIOD_SECONDS, server=server, workers=1, room_prefix="observer")
        results = []
        try:
            observe(observer, config)  # joined, and the server warm, before any attack's start is measured
            for attack_type in attacks:
                result = run_attack(attack_type, server, observer, config)
                print(report_attack(result), flush=True)
                results.append(result)
        finally:
            observer.close()
        rooms = idle_rooms(server, config) if with_rooms else None
        if rooms is not None:
            print(report_rooms(rooms), flush=True)
    targets = {f"{result['attack']}: {name}": ok for result in results for name, ok in result["targets"].items()}
    if rooms is not None:
        targets.update(rooms["targets"])
    return {"server": kind, "config": config.__dict__, "attacks": results, "idle_rooms": rooms, "targets": targets}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--attacker":
        print(json.dumps(_attacker_main(sys.argv[2], json.loads(sys.argv[3]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description="loopsync under hostile load: an observer room beside each attack")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of each attack at small counts, 2 x 300 rooms (the test suite)")
    parser.add_argument("--kind", default="loopsync", choices=sorted(harness.KINDS), help="the server (default: loopsync on SQLite)")
    parser.add_argument("--attacks", help="comma-separated, some of: " + ", ".join(a.name.replace(" ", "-") for a in ATTACKS) + "; or none")
    parser.add_argument("--window", type=float, help="seconds of each observer window (default 4)")
    parser.add_argument("--rooms", type=int, help="rooms of the idle-rooms step (default 100,000; 0 leaves the step out)")
    parser.add_argument("--grace", type=float, help="seconds to wait for the server's idle grace before measuring (default 35)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    config = Config(**SMOKE.__dict__) if args.smoke else Config()
    if args.window is not None:
        config.window_seconds = args.window
    if args.rooms is not None:
        config.rooms = args.rooms
    if args.grace is not None:
        config.grace_seconds = args.grace
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
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"{len(figures['targets']) - len(missed)} of {len(figures['targets'])} targets met in {figures['seconds']:.0f} s"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
