"""The conformance kit: protocol scenarios as data, played against any loopsync server.

A scenario (``src/loopsync/scenarios/*.json``, format in
``docs/conformance.md``) names connections, frames to send and frames to
expect, with wildcards for the values a server chooses. :func:`run_scenario`
plays one against a server's WebSocket URL and returns a :class:`Verdict`;
``loopsync conformance ws://HOST:PORT/ws`` plays them all and prints each
verdict. The scenarios ship with the package, so a second implementation
proves itself with nothing but ``pip install loopsync``.

What a scenario may rely on (the protocol's ordering rules):

- frames on one connection arrive in the order the server sent them;
- the replies to one connection's messages (``snapshot``, ``ack``,
  ``error``) come in the order of those messages, while other traffic
  (others' ``update``, ``presence``) may come between them; so an
  expectation takes the next unread frame of its own stream: replies,
  updates or presence;
- presence is coalesced and timing-dependent: it is ignored unless a step
  expects it, and a ``presence`` step waits until the connection's presence
  table (full tables and deltas applied) matches.

Errors: a bad scenario file raises :class:`ScenarioError`; a server that
behaves otherwise than a scenario says fails that scenario (a verdict,
never an exception).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aiohttp

from .sync import PresenceTable

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_TIMEOUT_SECONDS = 5.0
RESTART_WAIT_SECONDS = 30.0
NEEDS = frozenset({"restart"})
STEP_KINDS = ("note", "send", "expect", "presence", "quiet", "disconnect", "restart", "repeat", "mark", "presence_rate")

Restart = Callable[[], Awaitable[None]]
Json = Any


class ScenarioError(Exception):
    """A scenario file that is not valid: the kit's fault, not the server's."""


class _Failed(Exception):
    """The server did not do what the scenario says (internal: becomes a failing verdict)."""

    def __init__(self, reason: str, step: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step


@dataclass(frozen=True)
class Scenario:
    """One scenario file, parsed."""

    name: str
    about: str
    steps: list[dict[str, Any]]
    needs: tuple[str, ...] = ()
    example_values: dict[str, Any] = field(default_factory=dict)
    check_presence_shape: bool = False


@dataclass(frozen=True)
class Verdict:
    """How one scenario went: ``pass``, ``fail`` (with the step and why) or ``not run`` (with why)."""

    name: str
    verdict: str
    seconds: float = 0.0
    step: str | None = None
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        """The verdict as a JSON object (``--json``)."""
        return {"name": self.name, "verdict": self.verdict, "seconds": round(self.seconds, 3), "step": self.step, "reason": self.reason}


# -- loading --------------------------------------------------------------------------


def load_scenarios(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    """Every ``*.json`` scenario of ``directory``, sorted by name; :class:`ScenarioError` names the first bad file."""
    scenarios = [load_scenario(path) for path in sorted(directory.glob("*.json"))]
    if not scenarios:
        raise ScenarioError(f"no scenario files (*.json) in {directory}")
    return scenarios


def load_scenario(path: Path) -> Scenario:
    """One scenario file; its ``name`` must be its file name without ``.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("name") != path.stem:
        raise ScenarioError(f"{path}: must be an object whose name is {path.stem!r}")
    needs = tuple(data.get("needs", ()))
    unknown = set(needs) - NEEDS
    if unknown:
        raise ScenarioError(f"{path}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{path}: steps must be a non-empty list")
    for where, step in _walk(steps):
        kinds = [kind for kind in STEP_KINDS if kind in step]
        if len(kinds) != 1:
            raise ScenarioError(f"{path}: step {where} must have exactly one of {', '.join(STEP_KINDS)}: {json.dumps(step)[:120]}")
        if "restart" in step and "restart" not in needs:
            raise ScenarioError(f"{path}: step {where} restarts the server, so the scenario must say \"needs\": [\"restart\"]")
    return Scenario(
        name=data["name"],
        about=str(data.get("about", "")),
        steps=steps,
        needs=needs,
        example_values=dict(data.get("example_values", {})),
        check_presence_shape=bool(data.get("check_presence_shape", False)),
    )


def _walk(steps: list[Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for index, step in enumerate(steps, start=1):
        where = f"{prefix}{index}"
        if not isinstance(step, dict):
            raise ScenarioError(f"step {where} is not an object")
        yield where, step
        if "repeat" in step:
            yield from _walk(step.get("steps", []), f"{where}.")


# -- patterns -------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "$any": lambda value: True,
    "$int": lambda value: type(value) is int,
    "$number": lambda value: type(value) in (int, float),
    "$string": lambda value: isinstance(value, str),
    "$bool": lambda value: isinstance(value, bool),
}
_VARIABLE = re.compile(r"\$(=?)([A-Za-z_][A-Za-z0-9_]*)(?:([+-])([0-9]+))?")


def match(pattern: Json, actual: Json, variables: dict[str, Any]) -> str | None:
    """None when ``actual`` matches ``pattern`` (binding ``$=name`` variables into ``variables``), else what differs.

    Bindings are kept only when the whole value matches.
    """
    trial = dict(variables)
    problem = _match(pattern, actual, trial, "")
    if problem is None:
        variables.update(trial)
    return problem


def _match(pattern: Json, actual: Json, variables: dict[str, Any], path: str) -> str | None:
    where = path or "the frame"
    if isinstance(pattern, str) and pattern.startswith("$"):
        if pattern.startswith("$$"):
            return None if actual == pattern[1:] else f"{where}: expected {pattern[1:]!r}, got {_show(actual)}"
        if pattern in _TYPES:
            return None if _TYPES[pattern](actual) else f"{where}: expected {pattern[1:]}, got {_show(actual)}"
        found = _VARIABLE.fullmatch(pattern)
        if found is None:
            raise ScenarioError(f"unknown wildcard {pattern!r} at {where}")
        bind, name, sign, amount = found.groups()
        if bind and name not in variables:
            variables[name] = actual
            return None
        if name not in variables:
            raise ScenarioError(f"variable ${name} is used at {where} before a $={name} binds it")
        expected = variables[name]
        if sign:
            if type(expected) is not int:
                raise ScenarioError(f"variable ${name} is not an integer, so {pattern} means nothing")
            expected = expected + int(amount) if sign == "+" else expected - int(amount)
        return None if _same_json(expected, actual) else f"{where}: expected {_show(expected)} (${name}), got {_show(actual)}"
    if isinstance(pattern, dict):
        if set(pattern) == {"$string"}:
            return None if isinstance(actual, str) else f"{where}: expected a string, got {_show(actual)}"
        if set(pattern) == {"$unordered"}:
            return _match_unordered(pattern["$unordered"], actual, variables, where)
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {_show(actual)}"
        for key, expected in pattern.items():
            inner = f"{path}.{key}" if path else key
            if expected == "$absent":
                if key in actual:
                    return f"{inner}: expected no such field, got {_show(actual[key])}"
                continue
            if key not in actual:
                return f"{inner}: missing"
            problem = _match(expected, actual[key], variables, inner)
            if problem:
                return problem
        return None
    if isinstance(pattern, list):
        if not isinstance(actual, list) or len(actual) != len(pattern):
            return f"{where}: expected a list of {len(pattern)}, got {_show(actual)}"
        for index, (expected, value) in enumerate(zip(pattern, actual)):
            problem = _match(expected, value, variables, f"{path}[{index}]")
            if problem:
                return problem
        return None
    return None if _same_json(pattern, actual) else f"{where}: expected {_show(pattern)}, got {_show(actual)}"


def _match_unordered(patterns: list[Json], actual: Json, variables: dict[str, Any], where: str) -> str | None:
    if not isinstance(actual, list) or len(actual) != len(patterns):
        return f"{where}: expected a list of {len(patterns)} in any order, got {_show(actual)}"

    def assign(index: int, free: list[Json], bound: dict[str, Any]) -> dict[str, Any] | None:
        # Backtracking: bindings made by one pairing must hold for the rest.
        if index == len(patterns):
            return bound
        for position, value in enumerate(free):
            trial = dict(bound)
            if _match(patterns[index], value, trial, where) is None:
                result = assign(index + 1, free[:position] + free[position + 1:], trial)
                if result is not None:
                    return result
        return None

    result = assign(0, list(actual), dict(variables))
    if result is None:
        return f"{where}: expected, in any order, {_show(patterns)}; got {_show(actual)}"
    variables.update(result)
    return None


def _same_json(a: Json, b: Json) -> bool:
    """JSON equality: numbers by value (120 is 120.0), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _show(value: Json) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


def fill(value: Json, variables: dict[str, Any]) -> Json:
    """A frame to send with variables put in: ``"$name"`` becomes the value, ``${name}`` inside a string its text."""
    if isinstance(value, str):
        if value.startswith("$$"):
            return value[1:]
        whole = _VARIABLE.fullmatch(value)
        if whole is not None and not whole.group(1):
            name, sign, amount = whole.group(2), whole.group(3), whole.group(4)
            if name not in variables:
                raise ScenarioError(f"variable ${name} is sent before it is bound")
            result = variables[name]
            return result + int(amount) if sign == "+" else result - int(amount) if sign == "-" else result
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda found: str(variables[found.group(1)]), value)
    if isinstance(value, dict):
        return {fill(key, variables): fill(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, variables) for item in value]
    return value


# -- connections ----------------------------------------------------------------------


@dataclass
class _Frame:
    message: dict[str, Any]
    stream: str
    read: bool = False


class _Peer:
    """One named WebSocket of a scenario: what arrived, per stream, and the presence table it implies."""

    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse, check_presence_shape: bool) -> None:
        self.name = name
        self.ws = ws
        self.frames: list[_Frame] = []
        self.close_code: int | None = None
        self.closed = False
        self.violation: str | None = None
        self.joined = False
        self.table = PresenceTable()
        self.presence_times: list[float] = []
        self.check_presence_shape = check_presence_shape
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read(), name=f"conformance reader {name}")

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    self._arrived(frame.data)
                elif frame.type is aiohttp.WSMsgType.BINARY:
                    self.violation = self.violation or f"{self.name} received a binary frame ({len(frame.data)} bytes)"
                self.changed.set()
        except Exception as exc:  # the socket broke: recorded as a close without a code
            self.violation = self.violation or f"{self.name}: the connection failed ({exc!r})"
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            self.changed.set()

    def _arrived(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.violation = self.violation or f"{self.name} received a frame that is not JSON: {text[:200]!r}"
            return
        if not isinstance(message, dict):
            self.violation = self.violation or f"{self.name} received a frame that is not a JSON object: {text[:200]!r}"
            return
        kind = message.get("type")
        stream = "presence" if kind == "presence" else "update" if kind == "update" else "reply"
        if kind == "snapshot":
            self.joined = True
        if stream == "presence":
            if self.check_presence_shape:
                problem = presence_shape_problem(message)
                if problem:
                    self.violation = self.violation or f"{self.name} received a presence frame of the wrong shape ({problem}): {text[:300]}"
            self.presence_times.append(time.monotonic())
        try:
            self.table.on_message(message)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            self.violation = self.violation or f"{self.name}: a {kind} frame the presence table cannot read ({exc!r})"
        self.frames.append(_Frame(message, stream))

    def unread(self, stream: str | None = None) -> list[_Frame]:
        return [frame for frame in self.frames if not frame.read and (stream is None or frame.stream == stream)]


def presence_shape_problem(message: dict[str, Any]) -> str | None:
    """What is wrong with a presence frame of protocol v1 (None when it is right).

    A full table ``{"users": [entries]}`` or a delta ``{"changed": [entries],
    "left": [ids]}`` with both lists; an entry has a string ``id``, a
    ``user``, a boolean ``playing`` and ``bpm`` a number or null.
    """
    if "users" in message:
        entries = message["users"]
        if not isinstance(entries, list):
            return "users is not a list"
    else:
        entries, left = message.get("changed"), message.get("left")
        if not isinstance(entries, list) or not isinstance(left, list):
            return "a delta needs both changed and left as lists"
        if not all(isinstance(item, str) for item in left):
            return "left must list id strings"
    for entry in entries:
        if not isinstance(entry, dict):
            return "an entry is not an object"
        if not isinstance(entry.get("id"), str):
            return "an entry has no string id"
        if not isinstance(entry.get("user"), str) or not isinstance(entry.get("playing"), bool):
            return "an entry needs a user name and playing true/false"
        bpm = entry.get("bpm", "missing")
        if bpm is not None and type(bpm) not in (int, float):
            return "bpm must be a number or null"
    return None


# -- running --------------------------------------------------------------------------


class _Run:
    """One scenario being played: its connections, variables and deadline per wait."""

    def __init__(self, url: str, scenario: Scenario, session: aiohttp.ClientSession, restart: Restart | None, timeout_seconds: float,
                 other_urls: tuple[str, ...] = ()) -> None:
        self.url = url
        self.urls = (url, *other_urls)
        """Connections open in turn on these (the nodes of a cluster: one room's members on different nodes)."""
        self.scenario = scenario
        self.session = session
        self.restart = restart
        self.timeout_seconds = timeout_seconds
        self.peers: dict[str, _Peer] = {}
        self.marks: dict[str, float] = {}
        room = re.sub(r"[^A-Za-z0-9_-]", "-", scenario.name)[:23]
        self.variables: dict[str, Any] = {"room": f"{room}-{secrets.token_hex(4)}"}

    async def play(self, steps: list[dict[str, Any]], prefix: str = "") -> None:
        for index, step in enumerate(steps, start=1):
            where = f"{prefix}{index}"
            try:
                await self.step(step, where)
            except _Failed as exc:
                if exc.step is None:
                    exc.step = where
                raise

    async def step(self, step: dict[str, Any], where: str) -> None:
        if "note" in step or "mark" in step:
            if "mark" in step:
                self.marks[step["mark"]] = time.monotonic()
            return
        if "repeat" in step:
            name = step.get("var", "i")
            for number in range(1, int(step["repeat"]) + 1):
                self.variables[name] = number
                await self.play(step["steps"], f"{where}.{number}:")
            return
        if "restart" in step:
            await self.do_restart()
            return
        if "send" in step:
            await self.send(step)
        elif "expect" in step:
            peer = self.peer(fill(step["expect"], self.variables))
            if "close" in step:
                await self.expect_close(peer, step["close"])
            else:
                await self.expect_frame(peer, step["frame"], bool(step.get("next", False)))
        elif "presence" in step:
            await self.expect_presence(self.peer(fill(step["presence"], self.variables)), step["users"])
        elif "quiet" in step:
            await self.quiet(self.peer(fill(step["quiet"], self.variables)))
        elif "disconnect" in step:
            peer = self.peer(fill(step["disconnect"], self.variables))
            await peer.ws.close()
            await peer.reader
        elif "presence_rate" in step:
            self.check_presence_rate(step)

    def peer(self, name: str) -> _Peer:
        peer = self.peers.get(name)
        if peer is None:
            raise ScenarioError(f"connection {name!r} is used before anything is sent on it")
        return peer

    async def send(self, step: dict[str, Any]) -> None:
        name = fill(step["send"], self.variables)
        peer = self.peers.get(name)
        if peer is None:
            url = self.urls[len(self.peers) % len(self.urls)]
            try:
                ws = await self.session.ws_connect(url, heartbeat=None, max_msg_size=0,
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout_seconds))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise _Failed(f"cannot open connection {name!r} to {url}: {exc!r}") from None
            peer = self.peers[name] = _Peer(name, ws, self.scenario.check_presence_shape)
        if peer.closed:
            raise _Failed(f"cannot send on {name!r}: the connection is closed (code {peer.close_code})")
        try:
            if "binary_base64" in step:
                await peer.ws.send_bytes(base64.b64decode(step["binary_base64"]))
            elif "text_base64" in step:  # bytes as they are in one text frame: maybe not UTF-8
                _write_frames(peer.ws, [base64.b64decode(step["text_base64"])])
            elif "text" in step:
                await peer.ws.send_str(fill(step["text"], self.variables))
            else:
                frame = fill(step["frame"], self.variables)
                text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
                if "pad_to_bytes" in step:
                    text = _padded(frame, int(step["pad_to_bytes"]))
                if "fragments" in step:
                    _write_frames(peer.ws, _split(text.encode(), int(step["fragments"])))
                else:
                    await peer.ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _Failed(f"cannot send on {name!r}: {exc!r}") from None

    async def wait(self, peer: _Peer, ready: Callable[[], Any], what: str) -> Any:
        """Wait until ``ready()`` returns something true; fail after the timeout or if the connection closes first."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            if peer.violation:
                raise _Failed(peer.violation)
            result = ready()
            if result:
                return result
            if peer.closed:
                raise _Failed(f"{peer.name} was closed (code {peer.close_code}) while waiting for {what}; unread: {self.describe_unread(peer)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Failed(f"no {what} on {peer.name} within {self.timeout_seconds:g} s; unread: {self.describe_unread(peer)}")
            peer.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(peer.changed.wait(), remaining)

    def describe_unread(self, peer: _Peer) -> str:
        frames = [frame.message for frame in peer.unread() if frame.stream != "presence"]
        return _show(frames) if frames else "nothing"

    async def expect_frame(self, peer: _Peer, pattern: dict[str, Any], next_frame: bool) -> None:
        kind = pattern.get("type")
        if not isinstance(kind, str):
            raise ScenarioError("an expected frame needs a literal type")
        stream = "presence" if kind == "presence" else "update" if kind == "update" else "reply"
        frame: _Frame = await self.wait(peer, lambda: next(iter(peer.unread(stream)), None), f"{kind} frame")
        if next_frame and peer.unread()[0] is not frame:
            raise _Failed(f"expected {kind} as the next frame on {peer.name}, but {_show(peer.unread()[0].message)} came first")
        frame.read = True
        problem = match(fill_patterns(pattern, self.variables), frame.message, self.variables)
        if problem:
            raise _Failed(f"{peer.name} got {_show(frame.message)}: {problem}")

    async def expect_close(self, peer: _Peer, code: int) -> None:
        await self.wait(peer, lambda: peer.closed or None, f"close {code}")
        left = [frame.message for frame in peer.unread() if frame.stream != "presence"]
        if left:
            raise _Failed(f"{peer.name} got frames nobody expected before its close: {_show(left)}")
        if peer.close_code != code:
            raise _Failed(f"{peer.name} was closed with code {peer.close_code}, expected {code}")

    async def expect_presence(self, peer: _Peer, pattern: Json) -> None:
        problems: list[str] = []

        def table_matches() -> bool:
            problem = match(fill_patterns(pattern, self.variables), peer.table.listed(), self.variables)
            if problem:
                problems[:] = [problem]
            return problem is None

        try:
            await self.wait(peer, table_matches, "presence table like " + _show(pattern))
        except _Failed as exc:
            raise _Failed(f"{exc}; the table is {_show(peer.table.listed())}") from None
        for frame in peer.unread("presence"):
            frame.read = True

    async def quiet(self, peer: _Peer) -> None:
        """Nothing but presence is waiting on ``peer``: a fetch is answered by the next reply, a snapshot, and no update is unread."""
        await self.send({"send": peer.name, "frame": {"type": "fetch"}})
        frame: _Frame = await self.wait(peer, lambda: next(iter(peer.unread("reply")), None), "snapshot answering a fetch")
        frame.read = True
        if frame.message.get("type") != "snapshot":
            raise _Failed(f"{peer.name} got {_show(frame.message)} that nobody expected (a fetch was sent to check that nothing else came)")
        updates = [f.message for f in peer.unread("update")]
        if updates:
            raise _Failed(f"{peer.name} got updates nobody expected: {_show(updates)}")

    def check_presence_rate(self, step: dict[str, Any]) -> None:
        peer = self.peer(fill(step["presence_rate"], self.variables))
        since = self.marks[step["since"]]
        elapsed = time.monotonic() - since
        count = sum(1 for moment in peer.presence_times if moment >= since)
        allowed = math.ceil(float(step["per_second"]) * elapsed) + 1
        if count > allowed:
            raise _Failed(f"{peer.name} got {count} presence frames in {elapsed:.2f} s, more than {step['per_second']} per second allows ({allowed})")

    async def do_restart(self) -> None:
        if self.restart is None:
            raise ScenarioError("this scenario restarts the server but no way to restart it was given")
        await self.restart()
        for peer in self.peers.values():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(peer.reader), self.timeout_seconds)
        await wait_until_serving(self.url, self.session, RESTART_WAIT_SECONDS)

    async def finish(self) -> None:
        """Nothing unexpected is left on any open connection that joined."""
        for peer in self.peers.values():
            if peer.violation:
                raise _Failed(peer.violation)
            if peer.joined and not peer.closed:
                try:
                    await self.quiet(peer)
                except _Failed as exc:
                    raise _Failed(exc.reason, "end") from None

    async def close(self) -> None:
        for peer in self.peers.values():
            with contextlib.suppress(Exception):
                await peer.ws.close()
            peer.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await peer.reader


def fill_patterns(pattern: Json, variables: dict[str, Any]) -> Json:
    """Put ``${name}`` text into the strings of a pattern (wildcards stay as they are)."""
    if isinstance(pattern, str):
        if "${" in pattern:
            return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda found: str(variables[found.group(1)]), pattern)
        return pattern
    if isinstance(pattern, dict):
        return {fill_patterns(key, variables): fill_patterns(value, variables) for key, value in pattern.items()}
    if isinstance(pattern, list):
        return [fill_patterns(item, variables) for item in pattern]
    return pattern


def _split(data: bytes, count: int) -> list[bytes]:
    """``data`` in ``count`` pieces of nearly equal size (the fragments of one message)."""
    if count < 1:
        raise ScenarioError(f"fragments must be at least 1, got {count}")
    size = -(-len(data) // count)
    return [data[index * size:(index + 1) * size] for index in range(count)]


def _write_frames(ws: aiohttp.ClientWebSocketResponse, payloads: list[bytes]) -> None:
    """Send one text message as these frames (a text frame, then continuations), masked, payloads unchecked.

    aiohttp sends a message as one frame and only valid UTF-8 as text, so
    these frames are built here and written to the connection's transport.
    """
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None or transport.is_closing():
        raise ConnectionError("cannot write raw frames on this connection")
    for index, payload in enumerate(payloads):
        opcode = 0x1 if index == 0 else 0x0
        final = 0x80 if index == len(payloads) - 1 else 0
        length = len(payload)
        if length < 126:
            header = bytes([final | opcode, 0x80 | length])
        elif length < 65536:
            header = bytes([final | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([final | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
        mask = secrets.token_bytes(4)
        key = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        transport.write(header + mask + masked)


def _padded(frame: dict[str, Any], size_bytes: int) -> str:
    """The frame as JSON text of exactly ``size_bytes`` UTF-8 bytes, grown with a ``pad`` field of spaces."""
    base = json.dumps({**frame, "pad": ""}, separators=(",", ":"))
    missing = size_bytes - len(base.encode())
    if missing < 0:
        raise ScenarioError(f"a frame of {size_bytes} bytes cannot hold {base[:80]}")
    return json.dumps({**frame, "pad": " " * missing}, separators=(",", ":"))


async def wait_until_serving(url: str, session: aiohttp.ClientSession, timeout_seconds: float) -> None:
    """Wait until a WebSocket to ``url`` opens (after a restart); :class:`_Failed` after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    delay = 0.05
    while True:
        try:
            ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if time.monotonic() + delay > deadline:
                raise _Failed(f"the server at {url} did not come back within {timeout_seconds:g} s") from None
            await asyncio.sleep(delay)  # polling a server that is starting: there is no event to wait on
            delay = min(delay * 2, 1.0)
            continue
        await ws.close()
        return


async def run_scenario(url: str, scenario: Scenario, *, restart: Restart | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                       session: aiohttp.ClientSession | None = None, other_urls: tuple[str, ...] = ()) -> Verdict:
    """Play one scenario against the server at ``url``; a scenario that needs a restart is ``not run`` without ``restart``.

    ``other_urls``: more nodes of the same cluster; the scenario's connections open on ``url`` and them in turn.
    """
    if "restart" in scenario.needs and restart is None:
        return Verdict(scenario.name, "not run", reason="it restarts the server: give a way to restart it (--restart-command)")
    started = time.monotonic()
    own_session = session is None
    active = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    run = _Run(url, scenario, active, restart, timeout_seconds, other_urls)
    try:
        await run.play(scenario.steps)
        await run.finish()
    except _Failed as exc:
        return Verdict(scenario.name, "fail", time.monotonic() - started, exc.step, exc.reason)
    finally:
        await run.close()
        if own_session:
            await active.close()
    return Verdict(scenario.name, "pass", time.monotonic() - started)


async def run_all(url: str, scenarios: list[Scenario], *, restart: Restart | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                  on_verdict: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Play scenarios one after another (each in a room of its own); the verdicts in order."""
    verdicts = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for scenario in scenarios:
            verdict = await run_scenario(url, scenario, restart=restart, timeout_seconds=timeout_seconds, session=session)
            verdicts.append(verdict)
            if on_verdict is not None:
                on_verdict(verdict)
    return verdicts


def restart_command(command: str) -> Restart:
    """A :data:`Restart` that runs a shell command (which must exit 0 once the server is restarting or restarted)."""

    async def restart() -> None:
        process = await asyncio.create_subprocess_shell(command)
        code = await process.wait()
        if code != 0:
            raise _Failed(f"the restart command {command!r} exited with {code}")

    return restart


# -- transcripts ----------------------------------------------------------------------


def transcript(scenario: Scenario) -> str:
    """The scenario as a readable exchange (``alice> {...}`` sent, ``alice< {...}`` received), for the protocol's documentation.

    Wildcards show the scenario's ``example_values`` (``$=alice_id`` shows
    ``example_values["alice_id"]``), or ``<name>`` when it has none.
    """
    lines: list[str] = []
    _transcribe(scenario.steps, dict(scenario.example_values), lines, "")
    return "\n".join(lines) + "\n"


def _transcribe(steps: list[dict[str, Any]], values: dict[str, Any], lines: list[str], indent: str) -> None:
    width = max([len(str(step.get("send", step.get("expect", "")))) for step in steps] + [0])
    for step in steps:
        if "note" in step:
            lines.append(f"{indent}({step['note']})")
        elif "send" in step:
            who = str(step["send"]).ljust(width)
            if "binary_base64" in step:
                lines.append(f"{indent}{who}> (a binary frame of {len(base64.b64decode(step['binary_base64']))} bytes)")
            elif "text_base64" in step:
                lines.append(f"{indent}{who}> (a text frame of {len(base64.b64decode(step['text_base64']))} bytes that are not UTF-8)")
            elif "text" in step:
                lines.append(f"{indent}{who}> {step['text']}")
            else:
                padded = f" (padded to {step['pad_to_bytes']} bytes)" if "pad_to_bytes" in step else ""
                fragments = f" (in {step['fragments']} frames)" if "fragments" in step else ""
                lines.append(f"{indent}{who}> {_render(step['frame'], values)}{padded}{fragments}")
        elif "expect" in step:
            who = str(step["expect"]).ljust(width)
            if "close" in step:
                lines.append(f"{indent}{who}< (the server closes the connection with {step['close']})")
            else:
                lines.append(f"{indent}{who}< {_render(step['frame'], values)}")
        elif "presence" in step:
            entries = _example(step["users"], values)
            described = ", ".join(
                f"{entry.get('user')} {'playing' if entry.get('playing') else 'paused'}"
                + (f" at {entry['bpm']:g} BPM" if isinstance(entry.get("bpm"), (int, float)) else "")
                for entry in (entries if isinstance(entries, list) else [])
            )
            lines.append(f"{indent}({step['presence']}'s presence table now lists: {described})")
        elif "restart" in step:
            lines.append(f"{indent}(the server restarts)")
        elif "disconnect" in step:
            lines.append(f"{indent}({step['disconnect']} closes its connection)")
        elif "repeat" in step:
            lines.append(f"{indent}(repeated for ${{{step.get('var', 'i')}}} = 1 to {step['repeat']}:)")
            _transcribe(step["steps"], values, lines, indent + "  ")


def _render(pattern: Json, values: dict[str, Any]) -> str:
    return json.dumps(_example(pattern, values), separators=(",", ":"), ensure_ascii=False)


def _example(pattern: Json, values: dict[str, Any]) -> Json:
    if isinstance(pattern, str) and pattern.startswith("$") and not pattern.startswith("$$"):
        if pattern in _TYPES:
            return f"<{pattern[1:]}>"
        found = _VARIABLE.fullmatch(pattern)
        if found is None:
            return pattern
        name, sign, amount = found.group(2), found.group(3), found.group(4)
        value = values.get(name, f"<{name}>")
        if sign and isinstance(value, int):
            return value + int(amount) if sign == "+" else value - int(amount)
        return value
    if isinstance(pattern, str):
        # A repeat's counter (no example value) stays as ${i}.
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda found: str(values.get(found.group(1), found.group(0))), pattern)
    if isinstance(pattern, dict):
        if set(pattern) == {"$string"}:
            return pattern["$string"]
        if set(pattern) == {"$unordered"}:
            return [_example(item, values) for item in pattern["$unordered"]]
        return {key: _example(value, values) for key, value in pattern.items() if value != "$absent"}
    if isinstance(pattern, list):
        return [_example(item, values) for item in pattern]
    return pattern


# -- the command ----------------------------------------------------------------------


def main_conformance(args: argparse.Namespace) -> int:
    """``loopsync conformance`` (options in ``cli.py``): 0 when every scenario run passed, 1 when one failed, 2 for a usage error."""
    try:
        scenarios = load_scenarios(args.scenarios or SCENARIO_DIR)
    except ScenarioError as exc:
        print(f"The scenarios cannot be read: {exc}.", file=sys.stderr)
        return 2
    by_name = {scenario.name: scenario for scenario in scenarios}
    if args.list:
        for scenario in scenarios:
            needs = f" (needs: {', '.join(scenario.needs)})" if scenario.needs else ""
            print(f"{scenario.name}: {scenario.about}{needs}")
        return 0
    if args.transcript is not None:
        if args.transcript not in by_name:
            print(f"There is no scenario named {args.transcript!r}; `loopsync conformance --list` lists them.", file=sys.stderr)
            return 2
        print(transcript(by_name[args.transcript]), end="")
        return 0
    if args.url is None or not re.match(r"wss?://", args.url):
        print(f"Give the server's WebSocket URL, starting with ws:// or wss:// (got {args.url!r}).", file=sys.stderr)
        return 2
    unknown = [name for name in args.only if name not in by_name]
    if unknown:
        print(f"There is no scenario named {', '.join(map(repr, unknown))}; `loopsync conformance --list` lists them.", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print("The timeout must be a positive number of seconds.", file=sys.stderr)
        return 2
    chosen = [by_name[name] for name in args.only] if args.only else scenarios
    restart = restart_command(args.restart_command) if args.restart_command else None

    def report(verdict: Verdict) -> None:
        if args.json:
            print(json.dumps(verdict.as_json()), flush=True)
        elif verdict.verdict == "pass":
            print(f"PASS     {verdict.name} ({verdict.seconds:.2f} s)", flush=True)
        elif verdict.verdict == "not run":
            print(f"NOT RUN  {verdict.name}: {verdict.reason}.", flush=True)
        else:
            print(f"FAIL     {verdict.name} at step {verdict.step}: {verdict.reason}", flush=True)

    try:
        verdicts = asyncio.run(run_all(args.url, chosen, restart=restart, timeout_seconds=args.timeout, on_verdict=report))
    except ScenarioError as exc:
        print(f"A scenario is not valid: {exc}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    counts = {kind: sum(1 for verdict in verdicts if verdict.verdict == kind) for kind in ("pass", "fail", "not run")}
    if args.json:
        print(json.dumps({"summary": True, "passed": counts["pass"], "failed": counts["fail"], "not_run": counts["not run"]}))
    else:
        not_run = f", {counts['not run']} not run" if counts["not run"] else ""
        print(f"{counts['pass']} of {len(verdicts)} scenarios passed, {counts['fail']} failed{not_run}.")
    return 1 if counts["fail"] else 0

