"""The ledger's background tasks, sent through flask_uow's outbox.

With ``LEDGER_TASKS_BROKER`` (a Redis URL, in the config or the environment)
a committed transfer's notification is a Celery task, written into the
outbox in the transfer's own transaction: it is sent if and only if the
transfer commits, even when the web process dies right after the commit
(``flask --app example_app uow relay`` sends what the web process did not).
Run a worker with ``celery -A example_app.worker:celery worker``. Without it, the
notification is an ``on_commit`` callback in the web process.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from celery import Celery
from flask import Flask

from flask_uow import CeleryBroker

from . import notify
from . import uow
from .models import sent_notifications

TASK = "example_app.send_notification"


def make_celery(broker_url: str) -> Celery:
    """A Celery app on *broker_url* that knows the ledger's task."""
    celery = Celery("ledger", broker=broker_url, set_as_current=False)
    celery.conf.update(
        # A task whose worker dies is delivered again; @uow.once makes the
        # second run a no-op if the first committed.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    celery.task(name=TASK)(deliver)
    return celery


def configure(app: Flask, broker_url: str) -> None:
    """Turn the outbox on for *app*, publishing to *broker_url*; call it
    before ``uow.init_app(app)``.
    """
    app.config.setdefault("UOW_OUTBOX", True)
    app.config.setdefault("UOW_OUTBOX_BROKER", CeleryBroker(make_celery(broker_url)))


@uow.once
def deliver(message: str) -> None:
    """Deliver one notification, recording it in the task's unit of work."""
    uow.session.execute(sa.insert(sent_notifications).values(message=message))
    notify.send(message)


#: The worker's Celery app (``celery -A example_app.worker:celery worker``).
celery = make_celery(os.environ.get("LEDGER_TASKS_BROKER", "redis://127.0.0.1:6379/0"))
#: The task the transfer view enqueues (only its name is stored).
send_notification = celery.tasks[TASK]
