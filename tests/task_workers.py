"""Real Celery and RQ workers, started by a test as subprocesses against its
Redis server and its database, and stopped after it.

A worker runs in a process group of its own, so that stopping or killing it
reaches the processes it forks (Celery's pool, RQ's work horse) too. Stopping
sends SIGTERM and, after :data:`STOP_TIMEOUT`, SIGKILL; :meth:`Worker.kill`
sends SIGKILL at once, as a crash or the OOM killer would, and
:meth:`Worker.start` starts it again.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from .outbox_tasks import EFFECTS
from .outbox_tasks import UNITS
from .redis_server import RedisServer

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: How long a worker may take to say it is ready.
START_TIMEOUT = 30.0
#: How long a worker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 3.0


class Worker:
    """One worker subprocess, ready when ``marker`` appears in its log.

    :param argv: The command that runs it.
    :param env: Its environment.
    :param log_path: The file its output goes to (appended across restarts).
    :param marker: The text its log shows once it takes tasks.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: pathlib.Path,
        marker: str,
    ) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.marker = marker
        self.process: subprocess.Popen[bytes] | None = None
        #: How many times it was killed with SIGKILL.
        self.kills = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the worker and wait until its log says it is ready.

        :raise RuntimeError: It exited, or was not ready in time.
        """
        if self.running:
            raise RuntimeError("The worker is already running.")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.marker in self.log(offset):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"The worker {self.argv[2:]} was not ready within {START_TIMEOUT} s;"
            f" its log:\n{self.log(offset)}"
        )

    def stop(self) -> None:
        """Stop the worker: SIGTERM to its process group, then SIGKILL."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the worker and everything it forked with SIGKILL."""
        if self.running:
            self.kills += 1
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        # Whatever the group forked and left behind goes too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"


def worker_env(db_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker: this one, the test's database and Redis,
    and this repository first on the import path.
    """
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    env["UOW_TEST_EFFECTS_URL"] = db_url
    env["UOW_TEST_REDIS_URL"] = redis_url
    env.update(extra)
    return env


class Workers:
    """Starts workers for one test and stops every one of them after it."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.started: list[Worker] = []

    def celery(
        self,
        db_url: str,
        redis: RedisServer,
        *,
        app: str = "tests.outbox_tasks:celery_app",
        pool: str = "solo",
        concurrency: int = 1,
        queues: str = "celery",
        env: dict[str, str] | None = None,
    ) -> Worker:
        """Start a Celery worker of ``app`` on ``redis``."""
        n = len(self.started)
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            queues,
            "--hostname",
            f"w{n}@flask-uow-tests",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
        return self._start(
            argv, worker_env(db_url, redis.url, **(env or {})), " ready."
        )

    def rq(
        self,
        db_url: str,
        redis: RedisServer,
        *,
        module: str = "tests.outbox_tasks",
        queues: tuple[str, ...] = ("default",),
        env: dict[str, str] | None = None,
    ) -> Worker:
        """Start an RQ worker on ``redis`` taking ``queues``; ``module`` is
        run with ``python -m`` and must start the worker itself.
        """
        argv = [sys.executable, "-m", module, *queues]
        return self._start(
            argv, worker_env(db_url, redis.url, **(env or {})), "Listening on"
        )

    def _start(self, argv: list[str], env: dict[str, str], marker: str) -> Worker:
        log = self.folder / f"worker{len(self.started)}.log"
        worker = Worker(argv, env, log, marker)
        self.started.append(worker)
        worker.start()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def task_workers(tmp_path: pathlib.Path) -> cabc.Iterator[Workers]:
    """Start Celery and RQ workers; all are stopped after the test."""
    workers = Workers(tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()


def _drop_outbox_tables(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for name in ("uow_outbox", "uow_processed"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


@pytest.fixture
def no_outbox_tables(db_url: str) -> cabc.Iterator[None]:
    """No outbox table in the test database before the test, nor after it
    (the PostgreSQL database is shared by the tests of a process).
    """
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    _drop_outbox_tables(engine)
    try:
        yield
    finally:
        _drop_outbox_tables(engine)
        engine.dispose()


@pytest.fixture
def effects(db_url: str, no_outbox_tables: None) -> cabc.Iterator[Effects]:
    """The ``effects`` and ``units`` tables in the test database, created for
    the test, and a separate connection's view of them; no outbox table.
    """
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    EFFECTS.metadata.drop_all(engine)
    EFFECTS.metadata.create_all(engine)
    try:
        yield Effects(engine)
    finally:
        EFFECTS.metadata.drop_all(engine)
        engine.dispose()


class Effects:
    """Counts effect rows by key, through a connection of its own."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def counts(self) -> dict[str, int]:
        """How many times each key's effect was applied."""
        query = sa.select(EFFECTS.c.key, sa.func.count()).group_by(EFFECTS.c.key)
        with self.engine.connect() as conn:
            return {key: n for key, n in conn.execute(query)}

    def units(self) -> set[str]:
        """The keys of the units of work that committed."""
        with self.engine.connect() as conn:
            return set(conn.scalars(sa.select(UNITS.c.key)))

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def wait_for(
        self, keys: cabc.Iterable[str], *, timeout: float = 20.0, settle: float = 0.0
    ) -> dict[str, int]:
        """Wait until every key in ``keys`` has an effect (or ``timeout``
        passes), then ``settle`` seconds more for late duplicates; return the
        counts of every key.
        """
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= self.counts().keys():
                break
            time.sleep(0.05)
        if settle:
            time.sleep(settle)
        return self.counts()
