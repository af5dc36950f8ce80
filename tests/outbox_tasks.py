"""Background tasks for the tests, run by real Celery and RQ workers.

Each task applies an *effect*: it inserts one row into the ``effects`` table
of the test database, keyed by the task's payload, and records the process
that ran it. A test counts the rows of a key, from its own connection, to see
whether a task ran never, once or more than once.

The worker processes find the database and Redis in the environment:
``UOW_TEST_EFFECTS_URL`` and ``UOW_TEST_REDIS_URL``. Run as a module, this is
an RQ worker: ``python -m tests.outbox_tasks QUEUE...``.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import sqlalchemy as sa
from celery import Celery

EFFECTS = sa.Table(
    "effects",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(200), nullable=False, index=True),
    sa.Column("pid", sa.Integer, nullable=False),
)

#: One row per unit of work that committed, written by the unit itself: the
#: tasks whose effect must be applied exactly once.
UNITS = sa.Table(
    "units",
    EFFECTS.metadata,
    sa.Column("key", sa.String(200), primary_key=True),
)

#: The name Celery knows :func:`apply_effect` by, in workers and senders.
APPLY_EFFECT = "tests.outbox_tasks.apply_effect"
SLOW_EFFECT = "tests.outbox_tasks.slow_effect"


def _engine() -> sa.Engine:
    return _engine_for(os.environ["UOW_TEST_EFFECTS_URL"])


@functools.cache
def _engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def apply_effect(key: str) -> None:
    """Insert one effect row for ``key``, in a transaction of its own."""
    with _engine().begin() as conn:
        conn.execute(sa.insert(EFFECTS).values(key=key, pid=os.getpid()))


def slow_effect(key: str, seconds: float) -> None:
    """Insert ``<key>:started``, wait ``seconds``, then apply the effect for
    ``key``: a task a test can kill its worker in the middle of.
    """
    apply_effect(f"{key}:started")
    time.sleep(seconds)
    apply_effect(key)


def record_in_unit(key: str) -> None:
    """Apply the effect for ``key`` in a transaction of the current app's
    unit of work: a task that ``Isolation.run_tasks`` runs isolated.
    """
    from flask import current_app

    uow = current_app.extensions["uow"]
    with uow.transaction():
        uow.session.execute(sa.insert(EFFECTS).values(key=key, pid=os.getpid()))


def make_celery(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` that knows this module's tasks.

    Tasks are acknowledged after they run and given back to the queue when
    their worker dies, and Redis hands an unacknowledged task to another
    worker after 5 s, so that killing a worker loses nothing.
    """
    app = Celery("flask_uow_tests", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 5},
        worker_hijack_root_logger=False,
    )
    app.task(name=APPLY_EFFECT)(apply_effect)
    app.task(name=SLOW_EFFECT)(slow_effect)
    return app


#: The app a Celery worker subprocess runs (``-A tests.outbox_tasks``).
celery_app = make_celery(os.environ.get("UOW_TEST_REDIS_URL", "redis://127.0.0.1:1/0"))


def _run_rq_worker(queues: list[str]) -> None:
    import logging

    from redis import Redis
    from rq import Queue
    from rq import Worker

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    connection = Redis.from_url(os.environ["UOW_TEST_REDIS_URL"])
    worker = Worker(
        [Queue(name, connection=connection) for name in queues],
        connection=connection,
    )
    worker.work(logging_level="INFO")


if __name__ == "__main__":
    _run_rq_worker(sys.argv[1:] or ["default"])
