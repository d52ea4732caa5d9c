"""A two-node loopsync cluster for the tests: real PostgreSQL, real Redis, nodes in this process or as subprocesses.

- :class:`InProcessCluster`: two :class:`~loopsync.server.Server` nodes in
  the test's event loop, each on its own port, one database and one Redis
  prefix. Its ``ws_url`` alternates between the nodes, so a test written
  for one server (``client = await connect(server.ws_url)``) puts the
  members of one room on both nodes.
- :func:`node_process`: ``loopsync serve --store postgresql://... --bus
  redis://...`` as a subprocess (a :class:`ServeProcess`), for kill -9.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

from loopsync.cluster import ClusterLink
from loopsync.pgstore import PostgresStore
from loopsync.server import Server
from serve_process import ServeProcess
from services import _children


class InProcessCluster:
    """Two nodes (``nodes[0]``, ``nodes[1]``) of one cluster in this process."""

    def __init__(self, dsn: str, redis_url: str, prefix: str, count: int = 2, **options: Any) -> None:
        self.dsn = dsn
        self.redis_url = redis_url
        self.prefix = prefix
        self.options = options
        self.nodes: list[Server] = [self._node() for _ in range(count)]
        self._turn = itertools.count()

    def _node(self) -> Server:
        return Server(PostgresStore(self.dsn), cluster=ClusterLink(self.redis_url, prefix=self.prefix, presence_ttl_seconds=1.5),
                      **self.options)

    async def start(self) -> InProcessCluster:
        for node in self.nodes:
            await node.start("127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def restart(self) -> None:
        """Stop every node and start new ones on the same ports (the conformance kit's restart)."""
        ports = [node.port for node in self.nodes]
        await self.stop()
        self.nodes = [self._node() for _ in ports]
        for node, port in zip(self.nodes, ports):
            await node.start("127.0.0.1", port)

    @property
    def ws_url(self) -> str:
        """The next node's WebSocket URL, in turn."""
        return self.nodes[next(self._turn) % len(self.nodes)].ws_url

    @property
    def http_url(self) -> str:
        return self.nodes[0].http_url

    @property
    def ws_urls(self) -> tuple[str, ...]:
        return tuple(node.ws_url for node in self.nodes)


class NodeProcess(ServeProcess):
    """``loopsync serve`` as one cluster node (a subprocess): kill it with :meth:`kill`."""

    def __init__(self, log_dir: Path, name: str, dsn: str, redis_url: str, port: int = 0, workers: int = 1) -> None:
        super().__init__(log_dir / name, store=dsn, port=port)
        self.redis_url = redis_url
        self.workers = workers

    def close(self) -> None:
        """Make sure nothing is left running, workers included (a test's teardown, whatever happened)."""
        if self.process is None or self.process.poll() is not None:
            return
        for child in _children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.kill()

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "loopsync", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--store", self.store, "--bus", self.redis_url]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        return command
