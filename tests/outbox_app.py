"""The app the outbox tests run in other processes: web workers that are
killed, relays (``flask --app tests.outbox_app uow relay``) and Celery or RQ
workers whose task runs under ``@uow.once``.

It reads the test's database, Redis and broker kind from the environment
(``UOW_TEST_EFFECTS_URL``, ``UOW_TEST_REDIS_URL``, ``UOW_TEST_BROKER`` =
``celery`` or ``rq``; ``UOW_TEST_GRACE`` seconds). Views:

``POST /units/<key>``
    inserts ``key`` into ``units`` and enqueues ``record_once(key)``;
``POST /rollback/<key>``
    does the same and answers 400, so the unit rolls back;
``POST /crash/<key>``
    does the same, and the process exits (``os._exit``) right after COMMIT,
    before anything is published.

Run as ``python -m tests.outbox_app load KEY...``, it is a web worker under
load: it makes those requests one after another, every fifth one rolled back.
Run as ``python -m tests.outbox_app rq QUEUE...``, it is an RQ worker.
"""

from __future__ import annotations

import logging
import os
import sys
import typing as t

import sqlalchemy as sa
from celery import Celery
from flask import Flask

from flask_uow import signals
from flask_uow import UnitOfWork

from .outbox_tasks import _run_rq_worker
from .outbox_tasks import EFFECTS
from .outbox_tasks import make_celery
from .outbox_tasks import UNITS

uow = UnitOfWork()

RECORD_ONCE = "tests.outbox_app.record_once"


@uow.once
def record_once(key: str) -> None:
    """Apply ``key``'s effect as a unit of work that also records the task's
    key, so that a redelivered task does nothing.
    """
    uow.session.execute(sa.insert(EFFECTS).values(key=key, pid=os.getpid()))


def make_broker(kind: str, redis_url: str) -> tuple[t.Any, t.Any]:
    """The broker adapter for ``kind`` and the task to enqueue with it."""
    import redis

    from flask_uow import CeleryBroker
    from flask_uow import RQBroker

    if kind == "celery":
        celery = make_celery(redis_url)
        task = celery.task(name=RECORD_ONCE)(record_once)
        return CeleryBroker(celery), task
    connection = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    return RQBroker(connection, queue="default"), record_once


def create_app(**config: t.Any) -> Flask:
    """The app, on the database and Redis named by the environment."""
    kind = os.environ.get("UOW_TEST_BROKER", "celery")
    broker, task = make_broker(kind, os.environ["UOW_TEST_REDIS_URL"])
    app = Flask(__name__)
    app.config.update(
        UOW_ENGINES={"default": os.environ["UOW_TEST_EFFECTS_URL"]},
        UOW_OUTBOX=True,
        UOW_OUTBOX_BROKER=broker,
        UOW_OUTBOX_GRACE=float(os.environ.get("UOW_TEST_GRACE", "1")),
        UOW_OUTBOX_RETRY_DELAY=0.2,
        UOW_OUTBOX_REDELIVER_AFTER=float(os.environ.get("UOW_TEST_REDELIVER", "0")),
    )
    app.config.update(config)
    uow.init_app(app)

    def unit(key: str) -> None:
        uow.session.execute(sa.insert(UNITS).values(key=key))
        uow.enqueue(task, key)

    @app.post("/units/<key>")
    def commit(key: str) -> tuple[str, int]:
        unit(key)
        return key, 201

    @app.post("/rollback/<key>")
    def rollback(key: str) -> tuple[str, int]:
        unit(key)
        return key, 400

    @app.post("/crash/<key>")
    def crash(key: str) -> tuple[str, int]:
        def exit_now(sender: Flask, **extra: t.Any) -> None:
            os._exit(17)

        signals.after_commit.connect(exit_now, app, weak=False)
        unit(key)
        return key, 201

    return app


#: The Celery app a worker runs (``-A tests.outbox_app:celery_app``); its
#: task pushes the app's context through ``@uow.once``.
celery_app: Celery = make_celery(
    os.environ.get("UOW_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
)
celery_app.task(name=RECORD_ONCE)(record_once)

if os.environ.get("UOW_TEST_WORKER"):
    worker_app = create_app()
    # "already processed" lines are what the chaos test counts.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("flask_uow").addHandler(handler)
    logging.getLogger("flask_uow").setLevel(logging.INFO)


def _load(keys: list[str]) -> None:
    client = create_app().test_client()
    for n, key in enumerate(keys):
        path = "rollback" if n % 5 == 4 else "units"
        client.post(f"/{path}/{key}")


def main(argv: list[str]) -> None:
    """What ``python -m tests.outbox_app`` does; run from the imported
    module, so that tasks are named after it, not after ``__main__``.
    """
    if argv[0] == "load":
        _load(argv[1:])
    elif argv[0] == "crash":
        create_app().test_client().post(f"/crash/{argv[1]}")
        sys.exit("The process should have exited right after COMMIT.")
    else:
        _run_rq_worker((argv[1:] if argv[0] == "rq" else argv) or ["default"])


if __name__ == "__main__":
    from tests import outbox_app

    outbox_app.main(sys.argv[1:])
