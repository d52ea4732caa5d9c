"""The benchmarks keep working: a few seconds of each command, and their checkers catch what they are meant to catch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loopsync.client import Event

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))  # appended: the scripts never shadow an installed module

import fanout  # noqa: E402  (a script in bench/)
import harness  # noqa: E402  (bench/harness.py)
import latency  # noqa: E402  (a script in bench/)
from loopsync.websocket import text_frame  # noqa: E402


def run_bench(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script> args`` with this Python; its output and exit code."""
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent)


def test_latency_smoke(tmp_path: Path) -> None:
    """bench/latency.py --smoke: every edit heard, within the bound, from the first possible Loop Start."""
    result = run_bench("latency.py", "--smoke", "--json", str(tmp_path / "latency.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "latency.json").read_text())
    assert figures["edits"] >= 3
    assert figures["heard"] == figures["within_bound"] == figures["first_possible"] == figures["edits"]
    assert figures["bob_loops_not_as_synced"] == []
    assert re.search(r"p50 \d+\.\d+ s +p90 \d+\.\d+ s +max \d+\.\d+ s", result.stdout)
    assert "verdict: OK" in result.stdout


def test_latency_browser_smoke(tmp_path: Path) -> None:
    """bench/latency.py --browser --smoke: two Chromium pages, every edit heard from the first possible Loop Start."""
    chromium = os.environ.get("LOOPSYNC_CHROMIUM", "/usr/bin/chromium")
    result = run_bench("latency.py", "--browser", "--chromium", chromium, "--smoke", "--json", str(tmp_path / "latency.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "latency.json").read_text())
    assert figures["client"] == "browser" and figures["edits"] >= 3
    assert figures["heard"] == figures["within_bound"] == figures["first_possible"] == figures["edits"]
    assert figures["bob_loops_not_as_synced"] == []
    assert "verdict: OK" in result.stdout


def test_soak_smoke(tmp_path: Path) -> None:
    """bench/soak.py --smoke: clients, cuts and a server restart; nothing acknowledged is lost and every copy agrees."""
    result = run_bench("soak.py", "--smoke", "--json", str(tmp_path / "soak.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "soak.json").read_text())
    assert figures["ok"] and figures["lost"] == 0 and figures["restarts"] == 1
    assert figures["acknowledged"] > 0 and figures["cuts"] > 0
    assert re.search(r"acknowledged: \d+ .*lost: 0", result.stdout)
    assert figures["failover_ms"]["clients"] == 6  # one process: the restart cuts every client
    assert "verdict: OK" in result.stdout


def test_soak_cluster_smoke(tmp_path: Path) -> None:
    """bench/soak.py --cluster --smoke: one of two workers killed; its clients fail over, the other's never reconnect, nothing lost."""
    result = run_bench("soak.py", "--cluster", "--smoke", "--json", str(tmp_path / "soak.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "soak.json").read_text())
    assert figures["ok"] and figures["lost"] == 0 and figures["restarts"] == 1 and figures["server"] == "cluster-2"
    assert figures["store_agrees_with_snapshot"]  # the snapshot against PostgreSQL
    assert figures["failover_ms"]["clients"] >= 1 and figures["failover_ms"]["max"] < 30_000
    assert figures["survivors"] >= 1 and figures["survivors_disconnected"] == 0
    assert re.search(r"failover \(signal to first ack\) of the \d+ clients the worker kill cut: p50 \d+ ms, max \d+ ms", result.stdout)
    assert "verdict: OK" in result.stdout


def test_fanout_smoke(tmp_path: Path) -> None:
    """bench/fanout.py --smoke --cluster exits 0; the disk is probed; every server, y-websocket and the clusters too, delivers every update; ratios are named."""
    result = run_bench("fanout.py", "--smoke", "--cluster", "--json", str(tmp_path / "fanout.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^disk: \d+ syncs of 4 KiB .* p99 \d+\.\d+ ms .* of the time stalled$", result.stdout, re.MULTILINE), result.stdout
    servers = ("relay", "floor", "loopsync", "loopsync-memory", "yjs", "cluster-floor", "cluster", "cluster-2")
    for kind in servers:
        assert re.search(rf"^  {kind} +\d+ conns .*\((\d+)/\1\) .*errors 0", result.stdout, re.MULTILINE), result.stdout
    for kind in ("cluster-floor", "cluster", "cluster-2"):  # PostgreSQL's and Redis's own CPU, started for the run
        assert re.search(rf"^  {kind} +.*errors 0  postgres \d+\.\d µs/delivery  redis \d+\.\d µs/delivery$", result.stdout, re.MULTILINE), result.stdout
    for kind in servers[1:]:
        assert re.search(rf"{kind} / relay throughput: \d+\.\d+", result.stdout), result.stdout
    figures = json.loads((tmp_path / "fanout.json").read_text())
    assert figures["disk"]["syncs"] > 0
    assert [run["server"] for run in figures["runs"]] == list(servers)


def test_fanout_session_keeps_its_clients_from_step_to_step() -> None:
    """A ramp's steps against one server: a larger step adds rooms, a smaller one leaves the rest idle, every step delivers all it sent (y-websocket's later steps too)."""
    for kind in ("loopsync", "yjs"):
        session = harness.Session(kind, 4, 0.25)
        try:
            rows = [session.step(rooms, 1.0, warmup=0.5) for rooms in (2, 4, 1)]
        finally:
            session.close()
        assert [row["connections"] for row in rows] == [8, 16, 4], kind
        assert session.connections == 16 and session.steps == 3
        for row in rows:
            assert row["updates_sent"] >= 3 * row["connections"], (kind, row)
            assert row["deliveries"] == row["deliveries_expected"] == 3 * row["updates_sent"], (kind, row)
            assert row["acks"] == row["updates_sent"] and row["errors"] == 0 and row["disconnects"] == 0, (kind, row)


def test_fanout_cost_runs_the_servers_in_turns_and_names_each_multiple(capsys: pytest.CaptureFixture[str]) -> None:
    """The cost scenario: every server once per round, in turn, every update delivered; each server's CPU per delivery as a multiple of the relay's."""
    rows = fanout.cost(0.5, ("relay", "floor", "loopsync"), rooms=2, rounds=2, warmup=0.3)
    out = capsys.readouterr().out
    assert [row["server"] for row in rows] == ["relay", "floor", "loopsync"] * 2
    for row in rows:
        assert row["scenario"] == "cost" and row["connections"] == 8
        assert row["deliveries"] == row["deliveries_expected"] > 0 and row["errors"] == 0, row
    for kind in ("relay", "floor", "loopsync"):
        assert re.search(rf"^  {kind} +8 conns  CPU per delivery [\d.]+, [\d.]+ µs \(median [\d.]+\) .*errors 0$", out, re.MULTILINE), out
    for kind in ("floor", "loopsync"):
        assert re.search(rf"^  {kind} / relay, CPU per delivery: (n/a|\d+\.\d\dx .*at most \d+\.\d\d of the relay's)", out, re.MULTILINE), out


def test_instructions_smoke(tmp_path: Path) -> None:
    """bench/instructions.py --smoke (needs valgrind): the floor and loopsync counted per update, loopsync as a multiple of the floor's."""
    result = run_bench("instructions.py", "--smoke", "--json", str(tmp_path / "instructions.json"), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "instructions.json").read_text())
    assert [row["server"] for row in rows] == ["floor", "loopsync"]
    assert all(row["updates"] > 0 and row["instructions_per_update"] > 0 for row in rows)
    assert re.search(r"^  loopsync +[\d,]+ instructions/update +\d+\.\d+x the floor", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^  loopsync / floor, instructions per update: \d+\.\d\dx", result.stdout, re.MULTILINE), result.stdout



def test_stages_smoke() -> None:
    """bench/stages.py --smoke: both paths write an ack and three deliveries per update; loopsync's and the floor's Python, and each stage, printed."""
    result = run_bench("stages.py", "--smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("floor", "loopsync"):
        assert re.search(rf"^  {kind} +\d+\.\d\d µs per update$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^  loopsync adds -?\d+\.\d\d µs per update \(-?\d+\.\d\d µs per delivery\)$", result.stdout, re.MULTILINE), result.stdout
    assert len(re.findall(r"^  \S.* loopsync +\d+\.\d\d", result.stdout, re.MULTILINE)) == 4, result.stdout


def test_hostile_smoke(tmp_path: Path) -> None:
    """bench/hostile.py --smoke: every attack beside the observer, figures without and during it, RSS and descriptors, the idle rooms; exit 1 exactly when a target is missed."""
    result = run_bench("hostile.py", "--smoke", "--json", str(tmp_path / "hostile.json"), timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    figures = json.loads((tmp_path / "hostile.json").read_text())
    names = ["presence storm", "update flood", "reconnect storm", "half-open", "slow readers", "fetch storm"]
    assert [attack["attack"] for attack in figures["attacks"]] == names
    for attack in figures["attacks"]:
        assert attack["without"]["acks"] == attack["without"]["updates_sent"] > 0, attack  # the observer, unhurt before
        assert attack["during"]["updates_sent"] > 0 and attack["during"]["ack_p99_ms"] > 0, attack
        assert attack["descriptors"]["during"] > attack["descriptors"]["start"], attack  # the attack was there
        assert re.search(rf"^{attack['attack']}: .*\n  observer acks  without: p50 +[\d.]+ ms  p99 +[\d.]+ ms  max +[\d.]+ ms",
                         result.stdout, re.MULTILINE), result.stdout
    assert figures["attacks"][3]["details"]["half_open"]["opened"] == 60
    assert figures["idle_rooms"]["rooms"] == 300 and [done["written"] for done in figures["idle_rooms"]["rounds"]] == [300, 300]
    missed = [name for name, ok in figures["targets"].items() if not ok]
    assert result.returncode == (1 if missed else 0), result.stdout
    assert re.search(r"^\d+ of \d+ targets met in \d+ s", result.stdout, re.MULTILINE), result.stdout

# -- the latency checker fails when it should ----------------------------------------------


PART_1 = {"sound": "kick", "steps": [1] + [0] * 15}
PART_2 = {"sound": "kick", "steps": [1, 1] + [0] * 14}


def _event(name: str, monotonic: float, **fields: Any) -> Event:
    return {"event": name, "monotonic": monotonic, **fields}


def _log(second_loop_plays: dict[str, Any]) -> list[tuple[str, Event]]:
    """Alice edits twice; Bob receives both updates before the sync of loop 2, whose loop plays ``second_loop_plays``."""
    loop = 1.0
    return [
        ("B", _event("loop_start", 0.0, loop=0, due=0.0, parts={})),
        ("A", _event("edit", 0.10, part=PART_1)),
        ("A", _event("sync", 0.20, loop=1, loop_start=0.25, taken=[], sent=True, seq=1)),
        ("B", _event("received", 0.21, message={"type": "update", "user": "alice", "seq": 1, "revision": 1, "part": PART_1})),
        ("B", _event("sync", 0.95, loop=1, loop_start=1.0, taken=["alice"], sent=False)),
        ("B", _event("loop_start", 1.0, loop=1, due=1.0, parts={"alice": PART_1})),
        ("A", _event("edit", 1.10, part=PART_2)),
        ("A", _event("sync", 1.20, loop=2, loop_start=1.25, taken=[], sent=True, seq=2)),
        ("B", _event("received", 1.21, message={"type": "update", "user": "alice", "seq": 2, "revision": 2, "part": PART_2})),
        ("B", _event("sync", 1.95, loop=2, loop_start=2.0, taken=["alice"], sent=False)),
        ("B", _event("loop_start", 2.0, loop=2, due=2.0, parts=second_loop_plays)),
        ("B", _event("sync", 2.95, loop=3, loop_start=3.0, taken=[], sent=False)),
        ("B", _event("loop_start", 2.0 + loop, loop=3, due=2.0 + loop, parts={"alice": PART_2})),
    ]


def test_latency_checker_passes_a_loop_that_plays_its_sync() -> None:
    """A timeline that follows the rules passes: both edits heard at the first Loop Start after their arrival."""
    run = latency.Run(bpm_a=300, bpm_b=233, lead=0.05, log=_log({"alice": PART_2}))
    figures = latency.analyse(run)
    assert latency.ok(figures), figures
    assert [edit["loop"] for edit in figures["per_edit"]] == [1, 2]
    assert [round(edit["latency"], 3) for edit in figures["per_edit"]] == [0.9, 0.9]


def test_latency_checker_catches_a_loop_that_plays_stale_data() -> None:
    """A loop that plays an older part than its sync took fails, and the edit counts as taken up late."""
    run = latency.Run(bpm_a=300, bpm_b=233, lead=0.05, log=_log({"alice": PART_1}))
    figures = latency.analyse(run)
    assert not latency.ok(figures)
    assert figures["bob_loops_not_as_synced"] == [2]
    assert figures["first_possible"] == 1
    assert figures["per_edit"][1]["loop"] == 3


def test_fanout_load_client_reads_frames_split_at_any_byte() -> None:
    """The load client's frame parser waits for a whole header: a TCP read may end inside the extended length."""
    worker = harness.Worker({"url": "ws://127.0.0.1:1/ws", "snapshots": True, "per_room": 4, "period": 1.0})
    worker.measured_from_us = 0
    client = harness.LoadClient(worker, 0)
    client.upgraded = True
    update = '{"type":"update","user":"user1","seq":%d,"revision":1,"part":{"sound":"kick","steps":[%s]}}'
    frames = b"".join(text_frame((update % (seq, ",".join("01" * steps))).encode()) for seq, steps in ((1, 16), (2, 8), (3, 64)))
    assert frames[1] & 0x7F == 126  # the first frame already needs the 16-bit length
    for cut in range(len(frames) + 1):
        worker.latencies_us.clear()
        client.buffer = b""
        client.data_received(frames[:cut])
        client.data_received(frames[cut:])
        assert len(worker.latencies_us) == 3, f"split at byte {cut}"


def test_fanout_worker_waits_for_every_answer_from_a_server_that_acknowledges() -> None:
    """A worker keeps listening while an update it sent is neither acknowledged nor refused (a stalled commit holds back its deliveries too); not for the relay, nor once a client was closed."""
    worker = harness.Worker({"url": "ws://127.0.0.1:1/ws", "snapshots": True, "acks": True, "per_room": 4, "period": 1.0})
    worker.stats.update(sent=3, acks=1, errors=1)
    assert worker.unanswered()
    worker.stats["acks"] = 2
    assert not worker.unanswered()
    worker.stats.update(acks=0, errors=0, disconnects=1)
    assert not worker.unanswered()
    relay_worker = harness.Worker({"url": "ws://127.0.0.1:1/ws", "snapshots": False, "per_room": 4, "period": 1.0})
    relay_worker.stats.update(sent=3)
    assert not relay_worker.unanswered()


def test_fanout_yjs_updates_are_real_yjs_and_timed_by_their_mark() -> None:
    """bench/yjs/updates.js makes valid sync messages with a mark; the load client times others' updates and counts its own echo as its ack."""
    harness.install_yjs()  # updates.js needs Yjs, whichever test runs first
    updates = harness.yjs_updates([("user0", 0), ("user1", 1)], 2)
    assert sorted(updates) == [0, 1] and all(len(messages) == 2 for messages in updates.values())
    message = updates[1][0]
    length = len(message) - 3  # sync (0), update (2), a one-byte varint length, the update
    assert message[:3] == b"\x00\x02" + harness.var_uint(length) and length < 0x80
    assert harness._MARK.search(message) is not None and message.count(harness._TIME_PLACEHOLDER) == 1
    assert harness.var_uint(300) == b"\xac\x02"  # lib0: low 7 bits first

    worker = harness.Worker({"url": "ws://127.0.0.1:1", "snapshots": False, "yjs": True, "per_room": 2, "period": 1.0})
    worker.measured_from_us = 1_000
    client = harness.LoadClient(worker, 0, updates[0])
    sent = updates[1][0].replace(harness._TIME_PLACEHOLDER, b"t=%016d" % 2_000, 1)
    client.frame(0x2, sent)  # another user's update: a delivery
    client.frame(0x2, updates[0][0].replace(harness._TIME_PLACEHOLDER, b"t=%016d" % 2_000, 1))  # its own, echoed: its ack
    client.frame(0x2, updates[1][1].replace(harness._TIME_PLACEHOLDER, b"t=%016d" % 500, 1))  # sent in the warm-up: not counted
    client.frame(0x2, b"\x00\x00\x01\x00")  # the server's sync step 1: not an update
    assert len(worker.latencies_us) == 1 and worker.stats["acks"] == 1


def test_fanout_ramp_search_doubles_then_bisects_and_retries_only_a_near_miss() -> None:
    """The ramp's search for one server: double until a miss, bisect four times; a near miss gets a second run, an overload does not."""
    def figures(p99_ms: float, cpu_share: float = 1.0) -> dict[str, Any]:
        return {"p99_ms": p99_ms, "deliveries": 100, "deliveries_expected": 100, "server_cpu_share": cpu_share}

    def run(verdict: Any, bisections: int = harness.RAMP_BISECTIONS) -> list[int]:
        search = harness.find_limit(20.0, bisections)
        asked = [next(search)]
        tries: dict[int, int] = {}
        while True:
            rooms = asked[-1]
            tries[rooms] = tries.get(rooms, 0) + 1
            try:
                asked.append(search.send(verdict(rooms, tries[rooms])))
            except StopIteration:
                return asked

    overloaded_past_700 = run(lambda rooms, _: figures(5.0 if rooms <= 700 else 100.0))
    assert overloaded_past_700 == [100, 200, 400, 800, 600, 700, 750, 725]
    assert run(lambda rooms, _: figures(5.0 if rooms <= 700 else 100.0), harness.QUICK_RAMP_BISECTIONS) == [100, 200, 400, 800, 600, 700, 750]
    near_miss_once_at_200 = run(lambda rooms, tries: figures(30.0 if rooms == 200 and tries == 1 else 5.0 if rooms <= 700 else 100.0))
    assert near_miss_once_at_200 == [100, 200, 200, 400, 800, 600, 700, 750, 725]
    stall_with_cpu_to_spare = run(lambda rooms, tries: figures(90.0, 0.5) if rooms == 400 and tries == 1 else figures(5.0 if rooms <= 700 else 100.0))
    assert stall_with_cpu_to_spare == [100, 200, 400, 400, 800, 600, 700, 750, 725]


def test_fanout_plot_draws_every_ramp_step_and_rings_each_limit(tmp_path: Path) -> None:
    """--plot draws each ramp step of each server, rings the most deliveries/s under the budget, and a saved run renders to PNG."""
    def step(server: str, deliveries_per_s: float, p99_ms: float) -> dict[str, Any]:
        return {"scenario": "ramp", "server": server, "deliveries_per_s": deliveries_per_s, "p99_ms": p99_ms,
                "deliveries": 100, "deliveries_expected": 100}

    rows = [step("relay", 12_000, 1.0), step("relay", 40_000, 5.0), step("relay", 48_000, 300.0),
            step("loopsync", 12_000, 5.0), step("loopsync", 24_000, 15.0), step("loopsync", 30_000, 80.0), step("floor", 30_000, 10.0),
            {"scenario": "rooms", "server": "yjs", "deliveries_per_s": 12_000, "p99_ms": 4.0}]
    svg = harness.ramp_svg(rows)
    assert svg.count('r="3"') == 7  # the seven ramp steps, not the rooms scenario
    assert svg.count('r="7"') == 3  # one ring per server: relay at 40,000, loopsync at 24,000, the floor at 30,000
    assert "loopsync: 24,000 deliveries/s under the budget, 0.80x floor" in svg
    assert "yjs" not in svg and "p99 budget 20 ms" in svg
    (tmp_path / "run.json").write_text(json.dumps({"disk": {}, "runs": rows}))
    result = run_bench("fanout.py", "--from-json", str(tmp_path / "run.json"), "--plot", str(tmp_path / "ramp.png"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "ramp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the harness -----------------------------------------------------------------------


def test_server_process_starts_a_kind_measures_it_and_starts_again_on_its_port() -> None:
    """A server kind starts on a free port, its CPU, memory and descriptors read from /proc, and after SIGKILL it starts again on the same port and data."""
    with harness.ServerProcess("loopsync") as server:
        port, data_dir = server.port, server.data_dir
        assert port > 0 and server.ws_url == f"ws://127.0.0.1:{port}/ws"
        assert server.rss_bytes() > 10 * 1024 * 1024 and server.open_descriptors() >= 4
        assert sum(server.cpu_seconds()) > 0
        server.stop(9)
        server.start()
        assert (server.port, server.data_dir, server.starts) == (port, data_dir, 2)
    assert server.process is not None and server.process.poll() is not None
    with pytest.raises(ValueError, match="unknown server kind 'cluster-9'"):
        harness.ServerProcess("cluster-9")


def test_send_times_are_shared_by_every_process_that_maps_the_file() -> None:
    """A sender's time for (client, seq) is what another mapping of the same file reads; seq wraps over the slots."""
    path = harness.SendTimes.create(4)
    try:
        writer, reader = harness.SendTimes(path, 4), harness.SendTimes(path, 4)
        writer.put(3, 7, 123_456)
        writer.put(3, 7 + harness.SEND_SLOTS, 654_321)
        writer.put(2, 7, 1)
        assert reader.get(3, 7) == 654_321 and reader.get(2, 7) == 1 and reader.get(0, 7) == 0
    finally:
        os.unlink(path)


def test_a_member_refused_before_it_joins_does_not_hold_up_the_step() -> None:
    """A client the server closes before its snapshot (room_full) counts as refused and the worker's step is ready without it."""
    worker = harness.Worker({"url": "ws://127.0.0.1:1/ws", "snapshots": True, "per_room": 4, "period": 1.0})
    worker.joining = 2
    first, second = harness.LoadClient(worker, 0), harness.LoadClient(worker, 1)
    worker.clients = {0: first, 1: second}
    first.frame(0x1, b'{"type":"snapshot","v":1}')
    second.connection_lost(None)
    assert worker.ready.is_set() and worker.refused == 1 and list(worker.clients) == [0]
    first.frame(0x1, b'{"type":"snapshot","v":1}')  # a fetch's answer later: not a second join
    assert worker.joining == 0


def test_a_kind_whose_ready_line_names_several_nodes_spreads_each_room_over_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind is a command line and a ready line; a ready line with several URLs (a cluster) gives one WebSocket URL per node, and a room's members take them in turn."""
    script = "import time; print('cluster ready: http://127.0.0.1:4001/ http://127.0.0.1:4002/', flush=True); time.sleep(60)"
    monkeypatch.setitem(harness.KINDS, "two-nodes", harness.Kind(("{python}", "-c", script), "cluster ready"))
    with harness.ServerProcess("two-nodes") as server:
        assert server.ws_urls == ["ws://127.0.0.1:4001/ws", "ws://127.0.0.1:4002/ws"] and server.port == 4001
        worker = harness.Worker({"urls": server.ws_urls, "snapshots": True, "per_room": 4, "period": 1.0})
        assert [worker.host_of(index) for index in range(4)] == ["127.0.0.1:4001", "127.0.0.1:4002"] * 2
