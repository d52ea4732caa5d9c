"""Server fan-out: loopsync against a bare relay on the same stack, same run, same load.

Each scenario starts the server in its own process (``loopsync serve``, SQLite
in a temporary directory, every update committed before it is acknowledged),
then the bare relay (``bench/bare_relay.py``), and drives each with the same
load from separate worker processes on 127.0.0.1. A client's update carries
its send time (``time.monotonic_ns() // 1000``, one clock for every process
of the machine) as its ``seq``, which both servers pass on, so every receiver
measures the delivery latency of every update.

Scenarios (default: about a minute in all; ``--long`` runs each 4x longer):

- ``rooms``: 500 rooms x 4 clients, each sending its part once per loop at
  two loops a second;
- ``crowd``: one room of 200 clients, each sending once every 2 s;
- ``ramp``: rooms of 4 clients each sending 10 updates a second, the number of
  rooms doubled step by step (50 to 800), to find the most deliveries per
  second with p99 under 20 ms.

Reports deliveries per second, latency p50/p99/max, server CPU seconds and
memory per connection, and loopsync's throughput as a ratio of the relay's.
``--smoke`` runs a few seconds of a small load (the test suite does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
STEPS = 16
WORKERS = 2
JOIN_TIMEOUT_SECONDS = 60
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TYPE = re.compile(r'"type": ?"(\w+)"')
_SEQ = re.compile(r'"seq": ?(\d+)')


# -- worker process ----------------------------------------------------------------


def _count_join(stats: dict[str, Any], ready: asyncio.Event) -> None:
    stats["joined"] += 1
    if stats["joined"] == stats["clients"]:
        ready.set()


async def _client(session: aiohttp.ClientSession, url: str, room: str, user: str, stats: dict[str, Any],
                  ready: asyncio.Event, go: asyncio.Event, period: float, duration: float) -> None:
    async with session.ws_connect(url, compress=0, max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"type": "hello", "v": 1, "room": room, "user": user, "playing": True, "bpm": 120}))
        if not stats["snapshots"]:  # the bare relay answers nothing to hello
            _count_join(stats, ready)

        async def receive() -> None:
            # A regex, not json.loads: the load generator must cost less than the server.
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                stats["last_receive"] = time.monotonic()
                kind = _TYPE.search(message.data)
                kind_name = kind.group(1) if kind else ""
                if kind_name == "snapshot":
                    _count_join(stats, ready)
                elif go.is_set() and kind_name == "update":
                    seq = _SEQ.search(message.data)
                    assert seq is not None
                    stats["latencies_us"].append(time.monotonic_ns() // 1000 - int(seq.group(1)))
                elif go.is_set() and kind_name == "ack":
                    stats["acks"] += 1
                elif kind_name == "error":
                    stats["errors"] += 1

        receiver = asyncio.create_task(receive())
        await go.wait()
        start = time.monotonic() + random.uniform(0, period)
        sends = int(duration / period)
        for index in range(sends):
            delay = start + index * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            steps = [random.randint(0, 1) for _ in range(STEPS)]
            seq = time.monotonic_ns() // 1000
            await ws.send_str(json.dumps({"type": "update", "seq": seq, "part": {"sound": "kick", "steps": steps}}))
            stats["sent"] += 1
        # Let the last deliveries arrive: until a quiet second, at most 10 s.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and time.monotonic() - stats["last_receive"] < 1:
            await asyncio.sleep(0.2)
        receiver.cancel()


async def _worker(config: dict[str, Any]) -> None:
    stats: dict[str, Any] = {"clients": len(config["members"]), "joined": 0, "snapshots": config["snapshots"], "sent": 0, "acks": 0, "errors": 0,
                             "latencies_us": [], "last_receive": 0.0}
    ready, go = asyncio.Event(), asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(_client(session, config["url"], room, user, stats, ready, go,
                                             config["period"], config["duration"]))
                 for room, user in config["members"]]
        await ready.wait()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        go.set()
        await asyncio.gather(*tasks)
    print(json.dumps(stats), flush=True)


# -- parent: servers, workers, figures ------------------------------------------------


@dataclass
class Server:
    """A server process under test and the URL it printed."""

    process: subprocess.Popen[str]
    ws_url: str

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _start(kind: str, data_dir: str) -> Server:
    if kind == "loopsync":
        command = [sys.executable, "-m", "loopsync", "serve", "--port", "0", "--store", "sqlite", "--data", data_dir]
    else:
        command = [sys.executable, str(ROOT / "bench" / "bare_relay.py"), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    ready = select.select([process.stdout], [], [], JOIN_TIMEOUT_SECONDS)[0]
    line = process.stdout.readline() if ready else ""
    if "http://" not in line:
        process.kill()
        raise RuntimeError(f"{kind} did not start: {line!r}")
    http_url = line.split("http://", 1)[1].split()[0].rstrip("/")
    return Server(process, f"ws://{http_url}/ws")


def _percentile(sorted_values: list[int], share: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))] / 1000


def run_load(kind: str, rooms: int, per_room: int, period: float, duration: float) -> dict[str, Any]:
    """Start ``kind``'s server, connect ``rooms x per_room`` clients, send for ``duration`` s; return figures."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = _start(kind, data_dir)
        try:
            rss_before = server.rss_bytes()
            members = [(f"room{r}", f"user{u}") for r in range(rooms) for u in range(per_room)]
            workers = []
            for index in range(WORKERS):
                config = {"url": server.ws_url, "snapshots": kind == "loopsync", "members": members[index::WORKERS], "period": period, "duration": duration}
                workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config)],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for worker in workers:
                assert worker.stdout is not None
                if not select.select([worker.stdout], [], [], JOIN_TIMEOUT_SECONDS)[0] or worker.stdout.readline().strip() != "ready":
                    for each in workers:
                        each.kill()
                    raise RuntimeError(f"a load worker did not connect its clients within {JOIN_TIMEOUT_SECONDS} s")
            connections = len(members)
            rss_connected = server.rss_bytes()
            cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            results = [json.loads(worker.communicate(timeout=duration + 60)[0].splitlines()[-1]) for worker in workers]
            wall = time.monotonic() - wall_before
            cpu = server.cpu_seconds() - cpu_before
        finally:
            server.stop()
    latencies = sorted(value for result in results for value in result["latencies_us"])
    sent = sum(result["sent"] for result in results)
    expected = sent * (per_room - 1)
    return {
        "server": kind, "rooms": rooms, "per_room": per_room, "connections": connections,
        "updates_sent": sent, "deliveries": len(latencies), "deliveries_expected": expected,
        "acks": sum(result["acks"] for result in results), "errors": sum(result["errors"] for result in results),
        "deliveries_per_s": len(latencies) / duration,
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1] / 1000 if latencies else float("nan"),
        # Share of one core over the sending window (the tail after it is mostly idle waiting).
        "server_cpu_s": cpu, "server_cpu_share": cpu / duration, "wall_s": wall,
        "kib_per_connection": (rss_connected - rss_before) / connections / 1024,
    }


def _row(figures: dict[str, Any]) -> str:
    return (f"  {figures['server']:<9} {figures['connections']:>5} conns  {figures['deliveries_per_s']:>9,.0f} deliveries/s"
            f"  ({figures['deliveries']}/{figures['deliveries_expected']})  p50 {figures['p50_ms']:6.2f} ms"
            f"  p99 {figures['p99_ms']:6.2f} ms  max {figures['max_ms']:7.2f} ms  cpu {figures['server_cpu_share']:4.0%}"
            f"  {figures['kib_per_connection']:5.1f} KiB/conn  errors {figures['errors']}")


def scenario(name: str, rooms: int, per_room: int, period: float, duration: float) -> list[dict[str, Any]]:
    """Run one load against both servers and print the comparison."""
    print(f"{name}: {rooms} rooms x {per_room} clients, one update per client every {period:g} s, {duration:g} s")
    pair = [run_load(kind, rooms, per_room, period, duration) for kind in ("relay", "loopsync")]
    for figures in pair:
        print(_row(figures))
    relay, ours = pair
    print(f"  loopsync / relay throughput: {ours['deliveries_per_s'] / relay['deliveries_per_s']:.2f}"
          f"  cpu per delivery: {ours['server_cpu_s'] / max(ours['deliveries'], 1) / (relay['server_cpu_s'] / max(relay['deliveries'], 1)):.2f}x")
    for figures in pair:
        figures["scenario"] = name
    return pair


def ramp(duration: float, budget_ms: float = 20.0) -> list[dict[str, Any]]:
    """Double the number of rooms until p99 passes ``budget_ms``; report the best load under it per server.

    Each client sends 10 updates a second (half the server's per-connection
    rate limit), so the load grows by connections, as it does in real use.
    """
    period = 0.1
    print(f"ramp: rooms of 4 clients, one update per client every {period:g} s, rooms doubled each step,"
          f" {duration:g} s per step, p99 budget {budget_ms:g} ms")
    rows = []
    best_by_server: dict[str, dict[str, Any]] = {}
    for kind in ("relay", "loopsync"):
        rooms = 50
        while rooms <= 800:
            figures = run_load(kind, rooms, 4, period, duration)
            figures["scenario"] = "ramp"
            rows.append(figures)
            print(_row(figures))
            if figures["p99_ms"] > budget_ms or figures["deliveries"] < 0.999 * figures["deliveries_expected"]:
                break
            best_by_server[kind] = figures
            rooms *= 2
    for kind, best in best_by_server.items():
        print(f"  {kind}: most under the budget: {best['deliveries_per_s']:,.0f} deliveries/s"
              f" ({best['connections']} connections) at p99 {best['p99_ms']:.2f} ms")
    if len(best_by_server) == 2:
        print(f"  loopsync / relay, most deliveries/s with p99 under {budget_ms:g} ms:"
              f" {best_by_server['loopsync']['deliveries_per_s'] / best_by_server['relay']['deliveries_per_s']:.2f}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="loopsync fan-out against a bare relay")
    parser.add_argument("--long", action="store_true", help="run each scenario 4x longer")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of small load (for the test suite)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(json.loads(args.worker)))
        return 0
    if args.smoke:
        rows = scenario("smoke", 5, 4, 0.25, 1.5)
    else:
        scale = 4 if args.long else 1
        rows = scenario("rooms", 500, 4, 0.5, 10 * scale)
        rows += scenario("crowd", 1, 200, 2.0, 8 * scale)
        rows += ramp(4 * scale)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    lost = [row for row in rows if row["server"] == "loopsync"
            and (row["deliveries"] < row["deliveries_expected"] or row["errors"])]
    if lost:
        print(f"loopsync lost deliveries or answered errors in {len(lost)} runs.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
