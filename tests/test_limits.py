"""The server under hostile input and over time, on real sockets: no client hurts the others; memory, descriptors and logs stay bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loopsync import connection, server as server_module
from loopsync.server import Server, running
from loopsync.store import SqliteStore

from conftest import TIME_UNIT, Connect, ServeProcess

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Raw:
    """A client on a bare socket: writes whatever bytes a test wants, reads frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, *, upgrade: bool = True) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if upgrade:
            writer.write(HANDSHAKE)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIME_UNIT)
            assert head.startswith(b"HTTP/1.1 101 "), head
        return raw

    def frame(self, opcode: int, payload: bytes = b"", *, final: bool = True, masked: bool = True) -> None:
        first = (0x80 if final else 0) | opcode
        assert len(payload) < 126
        if masked:
            self.writer.write(bytes([first, 0x80 | len(payload), 0, 0, 0, 0]) + payload)  # a zero mask: masked all the same
        else:
            self.writer.write(bytes([first, len(payload)]) + payload)

    def send(self, message: dict[str, Any]) -> None:
        self.frame(0x1, json.dumps(message).encode())

    async def next_frame(self, timeout: float | None = None) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout or TIME_UNIT)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def next_message(self, kind: str) -> dict[str, Any]:
        """The next text message of ``kind`` (answering nothing, skipping other frames)."""
        while True:
            opcode, payload = await self.next_frame()
            if opcode == 0x1:
                message: dict[str, Any] = json.loads(payload)
                if message["type"] == kind:
                    return message

    async def close_code(self) -> int:
        """Read up to the server's close frame; its code."""
        while True:
            opcode, payload = await self.next_frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")

    async def cut(self, timeout: float) -> bool:
        """Whether the server ends the TCP connection within ``timeout`` (reading and dropping what comes)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


# -- time ------------------------------------------------------------------------------


async def test_connections_that_never_finish_their_handshake_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silent connections and ones dripping a header byte at a time are cut once the handshake time has passed."""
    monkeypatch.setattr(connection, "HANDSHAKE_SECONDS", 0.3)
    async with running() as server:
        silent = [await Raw.connect(server.port, upgrade=False) for _ in range(5)]
        dripping = await Raw.connect(server.port, upgrade=False)

        async def drip() -> None:
            for byte in HANDSHAKE[:-4]:
                dripping.writer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        dripper = asyncio.ensure_future(drip())
        results = await asyncio.gather(*(client.cut(5 * TIME_UNIT) for client in [*silent, dripping]))
        dripper.cancel()
        assert all(results)
        assert not server.connections


async def test_at_most_so_many_connections_wait_for_a_hello_and_the_oldest_goes(monkeypatch: pytest.MonkeyPatch, connect: Connect) -> None:
    """Past the limit of waiting connections the oldest waiting one is cut; joined ones are not counted and newcomers get in."""
    monkeypatch.setattr(server_module, "MAX_UNJOINED", 4)
    async with running() as server:
        member = await connect(server.ws_url)
        await member.join("demo", "alice")
        waiting = [await Raw.connect(server.port) for _ in range(4)]
        newcomer = await connect(server.ws_url)  # a fifth waiting connection: the oldest waiting one goes
        assert await waiting[0].cut(5 * TIME_UNIT)
        await newcomer.join("demo", "bob")
        await member.send({"type": "fetch"})
        await member.expect("snapshot")
        for client in waiting:
            client.writer.close()
        await member.close()
        await newcomer.close()


async def test_a_dead_peer_is_cut_by_the_heartbeat_whatever_its_buffers_hold(monkeypatch: pytest.MonkeyPatch, connect: Connect) -> None:
    """A member that neither reads nor answers pings, with a full socket, is cut at the heartbeat's check, and leaves its room."""
    monkeypatch.setattr(connection, "PING_INTERVAL_SECONDS", 0.3)
    monkeypatch.setattr(connection, "PONG_TIMEOUT_SECONDS", 0.3)
    async with running() as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        hello = b'{"type":"hello","v":1,"room":"demo","user":"dead"}'
        sock.sendall(HANDSHAKE + bytes([0x81, 0x80 | len(hello), 0, 0, 0, 0]) + hello)
        writer = await connect(server.ws_url)
        await writer.join("demo", "alice")
        await writer.wait_presence([("alice", False, None), ("dead", False, None)])
        for seq in range(1, 30):  # fill the dead peer's buffers
            await writer.send({"type": "update", "seq": seq, "part": KICK})
        await writer.wait_presence([("alice", False, None)], timeout=10 * TIME_UNIT)
        sock.close()
        await writer.close()


async def test_an_idle_room_leaves_memory_and_comes_back_from_the_store(tmp_path: Path, connect: Connect) -> None:
    """A room nobody is in is forgotten after the grace; start-up reads no room; the next hello loads it whole."""
    store = SqliteStore(tmp_path)
    async with running(store=store, room_grace=0.2) as server:
        alice = await connect(server.ws_url)
        await alice.join("demo", "alice")
        await alice.send({"type": "update", "seq": 3, "part": KICK})
        await alice.wait_for("ack")
        await alice.close()
        for _ in range(100):
            if not server.rooms:
                break
            await asyncio.sleep(0.05)
        assert not server.rooms
        again = await connect(server.ws_url)
        snapshot = await again.join("demo", "alice")
        assert snapshot["seq"] == 3 and snapshot["revision"] == 1 and snapshot["doc"]["parts"] == {"alice": KICK}
        await again.close()
    async with running(store=SqliteStore(tmp_path)) as restarted:
        assert not restarted.rooms
        bob = await connect(restarted.ws_url)
        assert (await bob.join("demo", "bob"))["revision"] == 1
        await bob.close()


# -- reading budget ---------------------------------------------------------------------


async def test_pings_and_fragments_count_against_the_reading_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of pings or empty continuation frames is read at the sustained rate: what follows it waits for tokens."""
    monkeypatch.setattr(connection, "RATE_PER_SECOND", 40.0)
    async with running() as server:
        for flood in ("pings", "fragments"):
            raw = await Raw.connect(server.port)
            raw.send({"type": "hello", "v": 1, "room": "demo", "user": "alice"})
            await raw.next_message("snapshot")
            loop = asyncio.get_running_loop()
            started = loop.time()
            if flood == "pings":
                for _ in range(80):
                    raw.frame(0x9)
                raw.send({"type": "fetch"})
            else:
                raw.frame(0x1, b'{"type":', final=False)
                for _ in range(80):
                    raw.frame(0x0, b"", final=False)
                raw.frame(0x0, b'"fetch"}')
            await raw.next_message("snapshot")
            # 40 frames of burst, then 40 a second: the other 41 or so take about a second
            assert loop.time() - started >= 0.8, flood
            raw.writer.close()


async def test_frames_queued_while_the_server_was_stopped_are_all_read(tmp_path: Path, serve_process: Any, connect: Connect) -> None:
    """A server stopped (SIGSTOP) and resumed reads what queued up meanwhile at the sustained rate: nothing refused, everything acked."""
    process: ServeProcess = serve_process()
    alice = await connect(process.ws_url)
    await alice.join("demo", "alice")
    assert process.process is not None
    process.process.send_signal(signal.SIGSTOP)
    try:
        for seq in range(1, 61):  # 60 updates: more than the burst of 40
            await alice.send({"type": "update", "seq": seq, "part": KICK})
            await asyncio.sleep(0.02)
    finally:
        process.process.send_signal(signal.SIGCONT)
    acked = [(await alice.wait_for("ack", timeout=10 * TIME_UNIT))["seq"] for _ in range(60)]
    assert acked == list(range(1, 61))
    assert not [m for m in alice.received if m["type"] == "error"]


# -- wire errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("frames, code", [
    ([(0x1, b'{"type":"fetch"}', True, False)], 1002),  # unmasked
    ([(0x3, b"", True, True)], 1002),  # reserved opcode
    ([(0x1, b"\xff", True, True)], 1007),  # not UTF-8
])
async def test_protocol_violations_close_with_their_code_and_the_room_goes_on(server: Server, connect: Connect,
                                                                              frames: list[tuple[int, bytes, bool, bool]], code: int) -> None:
    """Unmasked frames and other violations close with 1002, invalid UTF-8 with 1007; nothing is logged as an internal error."""
    member = await connect(server.ws_url)
    await member.join("demo", "bob")
    raw = await Raw.connect(server.port)
    raw.send({"type": "hello", "v": 1, "room": "demo", "user": "alice"})
    await raw.next_message("snapshot")
    for opcode, payload, final, masked in frames:
        raw.frame(opcode, payload, final=final, masked=masked)
    assert await raw.close_code() == code
    await member.send({"type": "fetch"})
    await member.expect("snapshot")


async def test_odd_paths_are_404_or_400_never_500_and_nothing_is_logged_as_internal(caplog: pytest.LogCaptureFixture) -> None:
    """NUL bytes, names over 255 bytes, traversal, bad percent-encoding, other methods: a client error, no traceback."""
    async with running() as server, aiohttp.ClientSession() as session:
        with caplog.at_level(logging.INFO):
            for path, status in (("%00", 404), ("a%00b.js", 404), ("x" * 300 + ".js", 404), ("../secret", 404),
                                 ("%2e%2e/secret", 404), ("%ff.js", 400), ("web/../../x", 404), ("ws2", 404)):
                async with session.get(server.http_url + path) as response:
                    assert response.status == status, path
            async with session.post(server.http_url) as response:
                assert response.status == 405
            async with session.get(server.http_url + "ws") as response:  # /ws without an upgrade
                assert response.status == 426
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


async def test_a_ping_flood_then_a_reset_logs_no_internal_error(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A client that floods pings and resets its connection is a client's doing: no error line, no traceback."""
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            raw = await Raw.connect(server.port)
            for _ in range(200):
                raw.frame(0x9, b"ping")
            sock = raw.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close sends RST
            raw.writer.close()
        await asyncio.sleep(0.5)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


# -- Origin -----------------------------------------------------------------------------------


async def test_only_the_servers_own_origin_and_listed_ones_may_open_a_websocket() -> None:
    """No Origin and the server's own are accepted, a listed one too; any other web page gets 403."""
    async with running(allowed_origins=("https://friend.example",)) as server, aiohttp.ClientSession() as session:
        own = f"http://127.0.0.1:{server.port}"
        for origin, allowed in ((None, True), (own, True), ("https://friend.example", True), ("https://evil.example", False),
                                (f"http://localhost:{server.port}", False)):
            headers = {"Origin": origin} if origin else {}
            try:
                ws = await session.ws_connect(server.ws_url, headers=headers)
                await ws.close()
                accepted = True
            except aiohttp.WSServerHandshakeError as error:
                assert error.status == 403
                accepted = False
            assert accepted == allowed, origin


# -- no lock-outs --------------------------------------------------------------------------------


async def test_no_seq_locks_a_user_out(server: Server, connect: Connect) -> None:
    """An update with the largest seq is refused (bad_seq), and the user's next ordinary update is accepted."""
    alice = await connect(server.ws_url)
    await alice.join("demo", "alice")
    await alice.send({"type": "update", "seq": 2**53 - 1, "part": KICK})
    assert (await alice.expect("error"))["code"] == "bad_seq"
    await alice.send({"type": "update", "seq": 1, "part": KICK})
    assert (await alice.expect("ack"))["seq"] == 1
    await alice.send({"type": "update", "seq": 2**52, "part": KICK})  # below 2^52 any jump is fine...
    await alice.expect("ack")
    await alice.send({"type": "update", "seq": 2**52 + 2**20, "part": KICK})  # ...then 2^20 at a time
    await alice.expect("ack")


# -- descriptors -------------------------------------------------------------------------------------


def test_at_the_descriptor_limit_new_connections_are_cut_and_the_server_goes_on(tmp_path: Path) -> None:
    """Under a limit of 128 descriptors, 200 connections do not break the server: the excess is cut, a line is logged, and it serves after."""
    log_path = tmp_path / "serve.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "loopsync", "serve", "--port", "0", "--store", "memory"],
                                   stdout=subprocess.PIPE, stderr=log_file, text=True, preexec_fn=limit)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        sockets = []
        for _ in range(200):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=TIME_UNIT))
        # The kernel completes handshakes before the server accepts them (backlog 1,024): hold every
        # connection open until the server has reached its limit, or a slow server sees only closed ones.
        deadline = time.monotonic() + 10 * TIME_UNIT
        while "at the connection limit" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for sock in sockets:
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5 * TIME_UNIT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(5 * TIME_UNIT)
            answer = sock.recv(100)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10 * TIME_UNIT)
    log = log_path.read_text()
    assert "at the connection limit" in log and "Traceback" not in log
    assert log.count("at the connection limit") <= 5
