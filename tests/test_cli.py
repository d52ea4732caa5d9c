"""``loopsync client`` as a command: real processes against a real server, plus its line parsing and wording."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

import pytest

from loopsync.client import _describe, _run_command

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
TIME_UNIT = 2.0 * TIMEOUT_SCALE


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "LOOPSYNC_USER"}
    env.update(extra)
    return env


async def _run(*args: str, env: dict[str, str] | None = None, units: float = 5) -> tuple[int, str, str]:
    """Run ``python -m loopsync ARGS`` with stdin closed; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loopsync", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env or _env(),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), units * TIME_UNIT)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_json_run_plays_the_loops_sends_the_toggles_and_exits_0(server: Any, connect: Any) -> None:
    """``client --json --loops 3 --toggle 0 --toggle 4`` prints a JSON event stream, gets its edit acknowledged, exits 0."""
    code, stdout, stderr = await _run("client", "--url", server.ws_url, "--room", "cli", "--user", "x", "--json", "--loops", "3", "--bpm", "840", "--toggle", "0", "--toggle", "4")
    assert code == 0, stderr
    events = _events(stdout)
    names = [event["event"] for event in events]
    assert [e["loop"] for e in events if e["event"] == "loop_start"] == [0, 1, 2]
    assert names[-1] == "done" and names.count("step") == 48
    assert "connected" in names and "ack" in names
    [update] = [e["message"] for e in events if e["event"] == "sent" and e["message"]["type"] == "update"]
    assert update["part"]["steps"][:5] == [1, 0, 0, 0, 1]
    times = [event["monotonic"] for event in events]
    assert times == sorted(times)
    watcher = await connect(server.ws_url)
    snapshot = await watcher.join(room="cli", user="watcher")
    assert snapshot["doc"]["parts"]["x"] == update["part"]


async def test_plain_output_is_one_sentence_per_loop(server: Any) -> None:
    """Without --json the client prints whole sentences, one line per loop."""
    code, stdout, stderr = await _run("client", "--url", server.ws_url, "--user", "y", "--loops", "2", "--bpm", "900", "--toggle", "1")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "Playing at 900 BPM."
    assert "Loop 0: silence." in lines
    assert "Loop 1: y plays kick .x..............." in lines
    assert lines[-1] == "Played 2 loops."
    assert all(line[0].isupper() and line.endswith(".") for line in lines)


async def test_steps_option_prints_a_line_per_step(server: Any) -> None:
    """``--steps`` prints one line per step instead of one per loop."""
    code, stdout, stderr = await _run("client", "--url", server.ws_url, "--user", "z", "--loops", "1", "--bpm", "900", "--steps")
    assert code == 0, stderr
    step_lines = [line for line in stdout.splitlines() if line.startswith("Loop 0 step ")]
    assert step_lines == [f"Loop 0 step {index}: rest." for index in range(16)]


async def test_user_comes_from_the_environment(server: Any) -> None:
    """Without --user, LOOPSYNC_USER names the user."""
    code, stdout, stderr = await _run("client", "--url", server.ws_url, "--json", "--loops", "1", "--bpm", "900", env=_env(LOOPSYNC_USER="envuser"))
    assert code == 0, stderr
    [hello] = [e["message"] for e in _events(stdout) if e["event"] == "sent" and e["message"]["type"] == "hello"]
    assert hello["user"] == "envuser"


async def test_missing_user_exits_2_with_a_clear_message() -> None:
    """No --user and no LOOPSYNC_USER: exit 2, and stderr says how to give one."""
    code, stdout, stderr = await _run("client", "--loops", "1")
    assert code == 2
    assert "--user NAME or LOOPSYNC_USER=NAME" in stderr
    assert stdout == ""


@pytest.mark.parametrize(
    "args, words",
    [
        (["--user", "al ice"], "The user name 'al ice' is not valid"),
        (["--user", "alice", "--room", "x" * 33], "The room name"),
        (["--user", "alice", "--url", "http://127.0.0.1:1/ws"], "must start with ws:// or wss://"),
        (["--user", "alice", "--bpm", "0"], "must be positive numbers"),
        (["--user", "alice", "--bpm", "3000", "--lead", "0.5"], "must be shorter than one loop"),
        (["--user", "alice", "--sound", "banjo"], "invalid choice"),
    ],
)
async def test_usage_errors_exit_2(args: list[str], words: str) -> None:
    """Bad names, URL, tempo, lead or sound: exit 2 with a sentence saying what is wrong."""
    code, _, stderr = await _run("client", *args)
    assert code == 2
    assert words in stderr


async def test_unreachable_server_exits_1() -> None:
    """A run that never reaches its server ends with exit 1 and says so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, stdout, stderr = await _run("client", "--url", f"ws://127.0.0.1:{port}/ws", "--user", "alice", "--loops", "2", "--bpm", "900")
    assert code == 1
    assert f"Could not reach the server at ws://127.0.0.1:{port}/ws." in stderr
    assert "Could not connect" in stdout


async def test_commands_from_stdin_edit_pause_play_and_quit(server: Any) -> None:
    """Commands on stdin: edits while paused go out on play; bad commands get a sentence; quit exits 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loopsync", "client", "--url", server.ws_url, "--user", "cmd", "--json", "--paused", "--bpm", "840",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    events: list[dict[str, Any]] = []

    async def until(name: str, where: Any = lambda e: True) -> dict[str, Any]:
        deadline = time.monotonic() + 3 * TIME_UNIT
        for event in events:
            if event["event"] == name and where(event):
                return event
        while True:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), max(0.01, deadline - time.monotonic()))
            assert line, f"the client ended before {name}; got {[e['event'] for e in events]}"
            event = json.loads(line)
            events.append(event)
            if event["event"] == name and where(event):
                return event

    try:
        await until("connected")
        process.stdin.write(b"toggle 3\nsound hat\nset 5 1\nfrobnicate\nbpm 900\n")
        await until("transport", lambda e: e["bpm"] == 900)
        assert [e["part"] for e in events if e["event"] == "edit"][-1] == {"sound": "hat", "steps": [0, 0, 0, 1, 0, 1] + [0] * 10}
        assert not [e for e in events if e["event"] == "sent" and e["message"]["type"] == "update"], "paused: nothing sent"
        process.stdin.write(b"play\n")
        update = await until("sent", lambda e: e["message"]["type"] == "update")
        assert update["message"]["part"]["sound"] == "hat"
        await until("ack")
        await until("loop_start", lambda e: e["loop"] == 1)
        process.stdin.write(b"pause\nquit\n")
        await process.stdin.drain()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 3 * TIME_UNIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert "Unknown command 'frobnicate'." in stderr.decode()


class _FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


@pytest.mark.parametrize(
    "line, call, keep_going",
    [
        ("toggle 3", ("toggle", 3), True),
        ("  TOGGLE   12 ", ("toggle", 12), True),
        ("set 4 1", ("set_step", 4, 1), True),
        ("sound snare", ("set_sound", "snare"), True),
        ("play", ("play",), True),
        ("pause", ("pause",), True),
        ("bpm 96.5", ("set_bpm", 96.5), True),
        ("", None, True),
        ("quit", None, False),
        ("exit", None, False),
        ("toggle", None, True),
        ("toggle x", None, True),
        ("dance", None, True),
    ],
)
def test_command_lines(line: str, call: tuple[Any, ...] | None, keep_going: bool) -> None:
    """Each stdin command calls the matching client method; quit stops; anything else is refused."""
    client = _FakeClient()
    assert _run_command(client, line) is keep_going  # type: ignore[arg-type]
    assert client.calls == ([call] if call else [])


@pytest.mark.parametrize(
    "event, steps, text",
    [
        ({"event": "loop_start", "loop": 4, "parts": {"a": {"sound": "kick", "steps": [1, 0]}, "b": {"sound": "hat", "steps": [0, 0]}}}, False, "Loop 4: a plays kick x.."),
        ({"event": "loop_start", "loop": 4, "parts": {}}, True, None),
        ({"event": "step", "loop": 2, "index": 3, "users": ["a", "b"]}, True, "Loop 2 step 3: a, b."),
        ({"event": "step", "loop": 2, "index": 3, "users": []}, False, None),
        ({"event": "sync", "loop": 9, "taken": ["bob"]}, False, "New parts from bob play from loop 9."),
        ({"event": "sync", "loop": 9, "taken": []}, False, None),
        ({"event": "sync_missed", "loop": 9, "late_seconds": 0.12}, False, "The sync for loop 9 came 120 ms late; that loop plays the previous parts."),
        ({"event": "presence", "users": [{"user": "a", "playing": True, "bpm": 120.0}, {"user": "b", "playing": False, "bpm": None}]}, False, "In the room: a (playing at 120 BPM), b (paused)."),
        ({"event": "disconnected", "reason": "the connection broke", "was_connected": True}, False, "Lost the connection: the connection broke."),
        ({"event": "reconnecting", "in_seconds": 0.4, "attempt": 2}, False, "Connecting again in 0.4 s."),
        ({"event": "received", "message": {}}, False, None),
    ],
)
def test_plain_output_wording(event: dict[str, Any], steps: bool, text: str | None) -> None:
    """Plain output is a whole sentence per shown event, and quiet about the rest."""
    assert _describe(event, steps) == text
