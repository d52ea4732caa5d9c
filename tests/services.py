"""Real PostgreSQL and Redis servers for the tests: started in a temporary directory on a free port, stopped at the end.

Nothing here is a fake: ``PostgresService`` runs Debian's PostgreSQL (15 on
Debian 12; ``initdb`` + ``postgres`` from ``/usr/lib/postgresql/VERSION/bin``), ``RedisService`` runs ``redis-server``. Each is
ready only once a real client connection works (asyncpg's ``SELECT 1``, redis-py's
``PING``). A missing binary FAILS the test with the Debian package to install;
nothing is ever skipped.

Fixtures (imported by ``tests/conftest.py``):

- ``postgres``: one server for the whole session; ``postgres_dsn`` gives each
  test its own fresh database on it (``CREATE DATABASE``) and makes sure the
  server runs when the test starts (a fault test may have stopped it).
- ``redis_service``: one server for the whole session; ``redis_url`` makes sure it
  runs, and ``bus_prefix`` gives each test its own key and channel prefix
  (Pub/Sub channels ignore Redis's numbered databases, so a prefix is what
  keeps tests apart).

Faults: ``postgres.crash()`` is an immediate shutdown (SIGQUIT to the
postmaster: no checkpoint, every backend killed, crash recovery at the next
start), ``postgres.kill()`` is SIGKILL of the postmaster and its backends;
``start()`` brings it back on the same port and data directory.
``redis_service.restart()`` kills ``redis-server`` (SIGKILL) and starts a new one on
the same port: with no persistence, it comes back empty. ``pause()``/``resume()``
(SIGSTOP/SIGCONT) make it silent with its connections open, as a partition would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
START_TIMEOUT_SECONDS = 30.0 * TIMEOUT_SCALE
"""How long a server may take to accept its first connection (crash recovery included)."""



def _postgres_bin() -> Path:
    """``$LOOPSYNC_POSTGRES_BIN``, else Debian's PostgreSQL 15, else the newest version Debian's packages installed."""
    if "LOOPSYNC_POSTGRES_BIN" in os.environ:
        return Path(os.environ["LOOPSYNC_POSTGRES_BIN"])
    preferred = Path("/usr/lib/postgresql/15/bin")
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    return preferred if (preferred / "postgres").exists() or not installed else installed[-1].parent


POSTGRES_BIN = _postgres_bin()
REDIS_SERVER = os.environ.get("LOOPSYNC_REDIS_SERVER", "redis-server")
POSTGRES_OS_USER = "postgres"
"""PostgreSQL refuses to run as root: as root, the server runs as this user (Debian's package creates it)."""


def _missing(what: str, package: str, detail: str) -> None:
    pytest.fail(f"{what} not found ({detail}): the cluster tests need a real one. "
                f"Install it with `apt-get install {package}` (Debian), or run .ci/run, which does.", pytrace=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until(check: Any, what: str, log: Path, process: subprocess.Popen[bytes]) -> None:
    """Call ``check()`` until it returns without raising; fail with the log if the process dies or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    problem: BaseException | None = None
    for attempt in itertools.count():
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with code {process.returncode}; log:\n{_tail(log)}")
        try:
            check()
            return
        except Exception as exc:  # not ready yet
            problem = exc
        if time.monotonic() > deadline:
            break
        time.sleep(min(0.01 * 1.5 ** attempt, 0.2))
    raise AssertionError(f"{what} did not accept a connection within {START_TIMEOUT_SECONDS:.0f} s ({problem!r}); log:\n{_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


class PostgresService:
    """One PostgreSQL 15 server on 127.0.0.1, its data and socket directory in a temporary directory.

    The superuser is ``postgres`` with ``trust`` authentication (on
    127.0.0.1 only). ``start()`` after ``stop()``/``crash()``/``kill()``
    comes back on the same port with the same data.
    """

    def __init__(self) -> None:
        for binary in ("initdb", "postgres"):
            if not (POSTGRES_BIN / binary).is_file():
                _missing("PostgreSQL", "postgresql", f"no {POSTGRES_BIN / binary}")
        self.directory = Path(tempfile.mkdtemp(prefix="loopsync-postgres-"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(POSTGRES_OS_USER)
            except KeyError:
                _missing("the operating-system user 'postgres'", "postgresql", "PostgreSQL cannot run as root")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._databases = itertools.count(1)

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` as the superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> PostgresService:
        """Create the cluster on first use, start the server and wait until it accepts a real connection."""
        assert not self.running, "PostgreSQL is already running"
        if not self.data_dir.exists():
            subprocess.run([str(POSTGRES_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--locale=C", "--no-sync"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._user)
        command = [str(POSTGRES_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                   "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                   "-c", "max_connections=60", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, **self._user)
        _wait_until(lambda: self.query("SELECT 1"), "PostgreSQL", self.log_path, self.process)
        return self

    def query(self, sql: str, database: str = "postgres") -> Any:
        """Run one statement on a new connection and return its rows (asyncpg, in an event loop of its own)."""
        import asyncpg

        async def run() -> Any:
            connection = await asyncpg.connect(self.dsn(database), timeout=2 * TIMEOUT_SCALE)
            try:
                return await connection.fetch(sql)
            finally:
                await connection.close()

        return asyncio.run(run())

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"test_{next(self._databases)}"
        self.query(f"CREATE DATABASE {name}")
        return name

    def stop(self) -> None:
        """A clean shutdown (SIGINT: fast shutdown, with a checkpoint)."""
        self._end(signal.SIGINT)

    def crash(self) -> None:
        """An immediate shutdown (SIGQUIT): backends die at once, the next start runs crash recovery."""
        self._end(signal.SIGQUIT)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: the machine-died case."""
        if self.running:
            assert self.process is not None
            children = _children(self.process.pid)
            self.process.kill()
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(timeout=START_TIMEOUT_SECONDS)
            _wait_gone(children)

    def _end(self, signal_number: int) -> None:
        if self.running:
            assert self.process is not None
            children = _children(self.process.pid)
            self.process.send_signal(signal_number)
            self.process.wait(timeout=START_TIMEOUT_SECONDS)
            _wait_gone(children)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.crash()
        shutil.rmtree(self.directory, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (PostgreSQL's backends and helpers), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _wait_gone(pids: list[int]) -> None:
    """Wait until every process in ``pids`` has exited (a restart on the same data directory needs it)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL process {pid} did not exit")
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


class RedisService:
    """One ``redis-server`` on 127.0.0.1 with no persistence; ``restart()`` comes back empty on the same port."""

    def __init__(self) -> None:
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            _missing("redis-server", "redis-server", f"{REDIS_SERVER!r} is not on PATH")
        assert binary is not None
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="loopsync-redis-"))
        self.log_path = self.directory / "redis.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisService:
        """Start ``redis-server`` and wait until it answers PING on a real connection."""
        assert not self.running, "Redis is already running"
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.log_path)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.starts += 1
        _wait_until(self.ping, "redis-server", self.log_path, self.process)
        return self

    def ping(self) -> None:
        """One PING on a new connection (redis-py's synchronous client)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2 * TIMEOUT_SCALE, socket_connect_timeout=2 * TIMEOUT_SCALE)
        try:
            client.ping()
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: connections drop at once and every key is lost."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)  # in case it was paused
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT_SECONDS)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a network partition, seen from the clients)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisService:
        """Kill and start again on the same port (empty: there is no persistence)."""
        self.kill()
        return self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    """One real PostgreSQL 15 for the session (fails, never skips, when it is not installed)."""
    service = PostgresService()
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture
def postgres_dsn(postgres: PostgresService) -> str:
    """The DSN of a fresh, empty database of its own for this test, on a running server."""
    if not postgres.running:
        postgres.start()
    return postgres.dsn(postgres.create_database())


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisService]:
    """One real redis-server for the session (fails, never skips, when it is not installed)."""
    service = RedisService()
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture
def redis_url(redis_service: RedisService) -> str:
    """The URL of the session's Redis, started again if an earlier test left it stopped."""
    if not redis_service.running:
        redis_service.start()
    return redis_service.url


@pytest.fixture
def bus_prefix() -> str:
    """A key and channel prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"
