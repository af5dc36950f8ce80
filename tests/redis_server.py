"""A Redis server of the test's own, started from Debian's ``redis-server``
binary on 127.0.0.1 and a free port, for the tests of background tasks.

Each test that asks for ``redis_server`` gets a fresh server that keeps
nothing on disk. ``make_redis(persistent=True)`` gives one that writes every
command to an append-only file before answering it, for tests that stop and
start Redis and need the queues to survive. A server can be stopped, killed
and started again on the same port, which is what "Redis went away for a
while" looks like to its clients.

When the binary is missing, the tests that need it fail if ``CI=true`` (CI
installs the ``redis-server`` package) and are skipped with a message
otherwise.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import typing as t

import pytest

#: How long a server may take to answer PING after it is started.
START_TIMEOUT = 10.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return t.cast(int, sock.getsockname()[1])


def _ping(port: int) -> bool:
    """Whether a Redis server answers PING on ``port``, in plain RESP so that
    the check needs no client library.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, always on the same port.

    :param binary: The path of ``redis-server``.
    :param folder: A folder of the server's own, for its log and, if
        persistent, its append-only file.
    :param persistent: Write every command to an append-only file, synced
        before the answer, so that queued tasks survive a stop or a kill.
    """

    def __init__(
        self, binary: str, folder: pathlib.Path, *, persistent: bool = False
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "redis.log"
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The URL clients connect to (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            "--save",
            "",
        ]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        :raise RuntimeError: It did not answer within :data:`START_TIMEOUT`.
        """
        if self.running:
            raise RuntimeError(f"Redis on port {self.port} is already running.")
        self.process = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(self.port):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"Redis did not start on port {self.port} within {START_TIMEOUT} s;"
            f" its log:\n{self.log()}"
        )

    def stop(self) -> None:
        """Stop the server with SIGTERM (it exits cleanly, flushing its
        append-only file), or SIGKILL if it does not exit in time.
        """
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop the server and start it again on the same port."""
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"


def redis_binary() -> str:
    """The path of ``redis-server``; if it is missing, fail under ``CI=true``
    and skip otherwise.
    """
    binary = os.environ.get("UOW_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
            if os.access(candidate, os.X_OK):
                binary = candidate
    if binary is None:
        message = (
            "These tests need a Redis server, but 'redis-server' was not found."
            " Install Debian's 'redis-server' package (apt-get install"
            " redis-server), or set UOW_TEST_REDIS_SERVER to the binary's path."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


RedisFactory = cabc.Callable[..., RedisServer]


@pytest.fixture
def make_redis(tmp_path: pathlib.Path) -> cabc.Iterator[RedisFactory]:
    """Start Redis servers for one test (``persistent=True`` for one whose
    data survives a stop); every one is stopped after the test.
    """
    binary = redis_binary()
    servers: list[RedisServer] = []

    def make(*, persistent: bool = False) -> RedisServer:
        server = RedisServer(
            binary, tmp_path / f"redis{len(servers)}", persistent=persistent
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(make_redis: RedisFactory) -> RedisServer:
    """A fresh Redis server on 127.0.0.1 that keeps nothing on disk."""
    return make_redis()
