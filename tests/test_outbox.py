"""Background tasks through the outbox (issue 22), on a real Redis with real
Celery and RQ workers, on SQLite and PostgreSQL: a task enqueued in a unit of
work runs if and only if the unit commits, and survives the process dying,
or the broker going away, between the COMMIT and the publish.

The effect of a task is a row in ``effects``, counted from a separate
connection (see ``tests/outbox_tasks.py``).
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import subprocess
import sys
import time
import typing as t

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .outbox_tasks import apply_effect
from .outbox_tasks import make_celery
from .outbox_tasks import UNITS
from .redis_server import RedisFactory
from .redis_server import RedisServer
from .task_workers import Effects
from .task_workers import ROOT
from .task_workers import worker_env
from .task_workers import Workers

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["celery", "rq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which task queue the test runs on."""
    return t.cast(str, request.param)


class Outbox:
    """An app whose outbox publishes to the test's Redis, the task it
    enqueues, and a worker that runs that task.
    """

    def __init__(
        self,
        app: Flask,
        uow: UnitOfWork,
        task: t.Any,
        start_worker: cabc.Callable[[], t.Any],
    ) -> None:
        self.app = app
        self.uow = uow
        self.task = task
        self.start_worker = start_worker

    def relay_once(self) -> str:
        """Run ``flask uow relay --once`` in this process; return its output."""
        result = self.app.test_cli_runner().invoke(args=["uow", "relay", "--once"])
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture
def outbox(
    broker_kind: str,
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    effects: Effects,
) -> cabc.Iterator[cabc.Callable[..., Outbox]]:
    """Build an :class:`Outbox` on ``broker_kind`` with extra config."""
    from flask_uow import CeleryBroker
    from flask_uow import RQBroker

    closers: list[cabc.Callable[[], object]] = []

    def make(**config: t.Any) -> Outbox:
        broker: t.Any
        if broker_kind == "celery":
            celery = make_celery(redis_server.url)
            closers.append(celery.close)
            broker, task = CeleryBroker(celery), celery.tasks[apply_effect_name()]

            def start() -> t.Any:
                return task_workers.celery(db_url, redis_server)

        else:
            connection = redis.Redis.from_url(
                redis_server.url, socket_connect_timeout=1
            )
            closers.append(connection.close)
            broker, task = RQBroker(connection, queue="default"), apply_effect

            def start() -> t.Any:
                return task_workers.rq(db_url, redis_server)

        app = make_app(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=broker, **config)
        return Outbox(app, uow, task, start)

    yield make
    for close in closers:
        close()


def apply_effect_name() -> str:
    from .outbox_tasks import APPLY_EFFECT

    return APPLY_EFFECT


def add_views(box: Outbox) -> None:
    """``/units/<key>`` commits a unit that enqueues ``key``;
    ``/rollback/<key>`` enqueues and answers 400; ``/savepoint/<key>``
    commits ``key`` but enqueues ``<key>-inner`` in a savepoint rolled back.
    """
    uow, app, task = box.uow, box.app, box.task

    @app.post("/units/<key>")
    def commit(key: str) -> tuple[str, int]:
        uow.session.execute(sa.insert(UNITS).values(key=key))
        uow.enqueue(task, key)
        return key, 201

    @app.post("/rollback/<key>")
    def rollback(key: str) -> tuple[str, int]:
        uow.session.execute(sa.insert(UNITS).values(key=key))
        uow.enqueue(task, key)
        return key, 400

    @app.post("/savepoint/<key>")
    def savepoint(key: str) -> tuple[str, int]:
        with uow.transaction():
            uow.enqueue(task, key)
            with pytest.raises(LookupError):
                with uow.transaction():  # A SAVEPOINT inside the block.
                    uow.enqueue(task, f"{key}-inner")
                    raise LookupError("roll the savepoint back")
        return key, 201


def outbox_rows(effects: Effects, where: str = "1 = 1") -> int:
    return t.cast(int, effects.scalar(f"SELECT count(*) FROM uow_outbox WHERE {where}"))


def test_committed_task_runs_once_rolled_back_never(
    outbox: cabc.Callable[..., Outbox], effects: Effects
) -> None:
    """A committed request's task, and one enqueued in a ``uow.transaction()``
    block outside requests, are published right after the commit (before any
    relay runs) and run once; a rolled-back request's task, and one enqueued
    in a savepoint that rolled back, are never written, so a relay pass finds
    nothing to publish and they never run.
    """
    box = outbox(UOW_OUTBOX_GRACE=0)
    add_views(box)
    box.start_worker()
    client = box.app.test_client()
    assert client.post("/units/a").status_code == 201
    assert client.post("/rollback/gone").status_code == 400
    assert client.post("/savepoint/s").status_code == 201
    with box.app.app_context():
        with box.uow.transaction():
            box.uow.enqueue(box.task, "cli")
    # The fast path alone: every committed row is already marked sent.
    assert effects.wait_for(["a", "s", "cli"]) == {"a": 1, "s": 1, "cli": 1}
    assert outbox_rows(effects, "sent_at IS NULL") == 0
    assert outbox_rows(effects) == 3
    assert "Published 0 tasks" in box.relay_once()
    assert effects.wait_for([], settle=0.5) == {"a": 1, "s": 1, "cli": 1}


#: The slower tests run each broker on one database: together they cover
#: both brokers and both databases.
PAIRS = pytest.mark.parametrize(
    ("broker_kind", "backend"), [("celery", "sqlite"), ("rq", "postgresql")]
)


@PAIRS
def test_crash_after_commit_before_publish(
    broker_kind: str,
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    effects: Effects,
) -> None:
    """The process exits (``os._exit``) right after COMMIT, before the
    publish: the row waits unsent, nothing runs; the relay publishes it once
    the grace period is over, and it runs once.
    """
    env = worker_env(
        db_url, redis_server.url, UOW_TEST_BROKER=broker_kind, UOW_TEST_GRACE="0.5"
    )
    child = subprocess.run(
        [sys.executable, "-m", "tests.outbox_app", "crash", "c1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert child.returncode == 17, child.stderr.decode()
    assert effects.units() == {"c1"}
    assert outbox_rows(effects, "sent_at IS NULL") == 1
    start_outbox_worker(broker_kind, db_url, redis_server, task_workers)
    assert effects.wait_for(["c1"], timeout=1.0) == {}
    relay = run_relay(env, "--once")
    assert relay.returncode == 0, relay.stderr
    assert effects.wait_for(["c1"], settle=0.5) == {"c1": 1}
    assert outbox_rows(effects, "sent_at IS NULL") == 0


def start_outbox_worker(
    kind: str, db_url: str, redis: RedisServer, workers: Workers, **kw: t.Any
) -> t.Any:
    """A worker whose task is ``tests.outbox_app.record_once``."""
    env = {"UOW_TEST_WORKER": "1", "UOW_TEST_BROKER": kind}
    if kind == "celery":
        return workers.celery(
            db_url, redis, app="tests.outbox_app:celery_app", env=env, **kw
        )
    return workers.rq(db_url, redis, module="tests.outbox_app", env=env)


def run_relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.outbox_app", "uow", "relay"]
        + list(args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@PAIRS
def test_task_lost_by_the_broker_is_published_again(
    broker_kind: str,
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    effects: Effects,
) -> None:
    """The fast path publishes a task and marks it sent, then the broker
    loses it (FLUSHALL, as a Redis without persistence restarting would):
    with ``UOW_OUTBOX_REDELIVER_AFTER``, the relay publishes it again since
    no ``@uow.once`` run recorded its key, and it runs once; a second pass,
    once it ran, publishes nothing.
    """
    env = worker_env(
        db_url, redis_server.url, UOW_TEST_BROKER=broker_kind, UOW_TEST_GRACE="0"
    )
    env["UOW_TEST_REDELIVER"] = "0.5"
    load = subprocess.run(
        [sys.executable, "-m", "tests.outbox_app", "load", "lost"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert load.returncode == 0, load.stderr.decode()
    assert outbox_rows(effects, "sent_at IS NULL") == 0
    redis.Redis.from_url(redis_server.url).flushall()
    time.sleep(0.6)
    assert "Published 1 tasks" in run_relay(env, "--once").stdout
    start_outbox_worker(broker_kind, db_url, redis_server, task_workers)
    assert effects.wait_for(["lost"], settle=1.0) == {"lost": 1}
    time.sleep(0.6)
    assert "Published 0 tasks" in run_relay(env, "--once").stdout


@PAIRS
def test_redis_stopped_during_a_burst(
    broker_kind: str,
    make_app: AppFactory,
    db_url: str,
    make_redis: RedisFactory,
    task_workers: Workers,
    effects: Effects,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stops in the middle of 30 requests: every request still answers
    as its unit decided (no request fails because the broker is down); once
    Redis is back and the relay has caught up, every committed task ran
    exactly once and none of the rolled-back ones.
    """
    server = make_redis(persistent=True)
    for name, value in worker_env(
        db_url,
        server.url,
        UOW_TEST_BROKER=broker_kind,
        UOW_TEST_GRACE="0",
        # A worker can lose the task it had taken when Redis goes away
        # (kombu's and RQ's pop-then-record window): published again.
        UOW_TEST_REDELIVER="2",
    ).items():
        monkeypatch.setenv(name, value)
    from . import outbox_app

    app = outbox_app.create_app()
    try:
        worker = start_outbox_worker(broker_kind, db_url, server, task_workers)
        client = app.test_client()
        statuses = {}
        for n in range(30):
            if n == 10:
                server.stop()
            if n == 20:
                server.start()
            path = "rollback" if n % 3 == 2 else "units"
            statuses[f"b{n}"] = client.post(f"/{path}/b{n}").status_code
        committed = {key for key, status in statuses.items() if status == 201}
        assert len(committed) == 20
        assert set(statuses.values()) == {201, 400}
        # An RQ worker exits when Redis goes away (when it notices varies);
        # its supervisor starts it again. A Celery worker reconnects by itself.
        if broker_kind == "rq":
            worker.restart()
        runner = app.test_cli_runner()
        result = runner.invoke(args=["uow", "relay", "--once"])
        assert result.exit_code == 0, result.output
        counts = effects.wait_for(committed, timeout=5.0)
        if counts.keys() != committed:  # Lost by the broker: the relay again.
            time.sleep(2.1)
            assert runner.invoke(args=["uow", "relay", "--once"]).exit_code == 0
        counts = effects.wait_for(committed, settle=1.0)
        assert counts == dict.fromkeys(committed, 1)
        assert outbox_rows(effects, "sent_at IS NULL") == 0
    finally:
        outbox_app.uow.dispose_engines(app)


@PAIRS
def test_two_relays_and_the_fast_path_race(
    tmp_path: pathlib.Path,
    broker_kind: str,
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    effects: Effects,
) -> None:
    """With no grace period, two relays running and the fast path publish the
    same rows: each task is published at least once, and ``@uow.once``
    applies each effect exactly once.
    """
    env = worker_env(
        db_url, redis_server.url, UOW_TEST_BROKER=broker_kind, UOW_TEST_GRACE="0"
    )
    start_outbox_worker(broker_kind, db_url, redis_server, task_workers)
    log = open(tmp_path / "relays.log", "ab")  # noqa: SIM115 - closed below
    relays = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "tests.outbox_app"]
            + ["uow", "relay", "--interval", "0.05"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        keys = [f"r{n}" for n in range(25)]
        load = subprocess.run(
            [sys.executable, "-m", "tests.outbox_app", "load", *keys],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert load.returncode == 0, load.stderr.decode()
        committed = effects.units()
        assert len(committed) == 20  # every fifth request rolls back
        counts = effects.wait_for(committed, settle=1.0)
        assert counts == dict.fromkeys(committed, 1)
        processed = effects.scalar("SELECT count(*) FROM uow_processed")
        assert processed == len(committed)
    finally:
        for relay in relays:
            relay.terminate()
        for relay in relays:
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(relay.pid, 9)
                relay.wait(10)
        log.close()
