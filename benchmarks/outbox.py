"""What the outbox costs: a request that inserts one row and enqueues one
Celery task through ``uow.enqueue``, against the same request that sends the
task with ``uow.on_commit(lambda: task.delay(...))``, on the same Redis
broker (a ``redis-server`` of its own on loopback, started the way the test
suite starts it; nothing consumes the tasks).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import typing as t

import sqlalchemy as sa
from celery import Celery
from flask import Flask

from flask_uow import CeleryBroker
from flask_uow import UnitOfWork

from .apps import Item
from .requests import request_runner
from .requests import time_runners

TASK = "benchmarks.outbox.welcome"


@dataclasses.dataclass
class OutboxResult:
    backend: str
    #: Median microseconds per request, by variant.
    median_us: dict[str, float]
    #: Outbox rows written, and rows the fast path left unsent.
    rows: int
    unsent: int

    @property
    def ratio(self) -> float:
        return self.median_us["outbox"] / self.median_us["on_commit"]


def _celery(redis_url: str) -> Celery:
    celery = Celery("bench", broker=redis_url, set_as_current=False)
    celery.conf.update(task_ignore_result=True, broker_connection_retry=False)
    celery.task(name=TASK)(welcome)
    return celery


def welcome(item_id: int) -> None:
    """The task; it runs nowhere, as nothing consumes the queue."""


def _app(url: str, redis_url: str, outbox: bool) -> tuple[Flask, UnitOfWork, Celery]:
    celery = _celery(redis_url)
    task = celery.tasks[TASK]
    app = Flask(f"outbox_{outbox}")
    app.config["UOW_ENGINES"] = {"default": url}
    if outbox:
        app.config.update(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=CeleryBroker(celery))
    uow = UnitOfWork(app)

    @app.post("/signup")
    def signup() -> tuple[str, int]:
        item = Item(name="new", value=1)
        uow.session.add(item)
        uow.session.flush()
        if outbox:
            uow.enqueue(task, item.id)
        else:
            item_id = item.id
            uow.on_commit(lambda: task.delay(item_id))
        return "ok", 201

    return app, uow, celery


def redis_binary() -> str | None:
    """The ``redis-server`` binary, if installed."""
    return shutil.which("redis-server")


def run(
    backend: str, url: str, folder: pathlib.Path, rounds: int, per_round: int
) -> OutboxResult:
    """Time both requests, interleaved round by round, on a fresh Redis."""
    from tests.redis_server import RedisServer

    binary = redis_binary()
    assert binary is not None
    server = RedisServer(binary, folder / f"redis-{backend}")
    server.start()
    built: dict[str, tuple[Flask, UnitOfWork, Celery]] = {}
    try:
        built = {
            "on_commit": _app(url, server.url, outbox=False),
            "outbox": _app(url, server.url, outbox=True),
        }
        calls: dict[str, t.Callable[[], None]] = {
            name: request_runner(app, "POST", "/signup")
            for name, (app, _, _) in built.items()
        }
        medians = time_runners(calls, rounds, per_round)
    finally:
        for app, uow, celery in built.values():
            uow.dispose_engines(app)
            celery.close()
        server.stop()
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM uow_outbox")).scalar_one()
        unsent = conn.execute(
            sa.text("SELECT count(*) FROM uow_outbox WHERE sent_at IS NULL")
        ).scalar_one()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE uow_outbox"))
        conn.execute(sa.text("DROP TABLE uow_processed"))
    engine.dispose()
    return OutboxResult(backend, medians, rows, unsent)
