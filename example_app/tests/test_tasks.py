"""The ledger's notifications as background tasks through the outbox, in
isolated tests: the task is captured, not published, and the test runs it.
(``tests/test_example_tasks.py`` runs them on a real Redis and Celery worker.)
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app import uow

from .test_ledger import Accounts
from .test_ledger import transfer


@pytest.fixture
def app(database_url: str) -> cabc.Iterator[Flask]:
    """The ledger with its notifications sent through the outbox; the broker
    is never reached, since isolated tests capture tasks.
    """
    app = create_app(
        {
            "TESTING": True,
            "UOW_ENGINES": {"default": database_url},
            "LEDGER_TASKS_BROKER": "redis://127.0.0.1:1/0",
        }
    )
    yield app
    uow.dispose_engines(app)


def test_committed_transfer_enqueues_its_notification(
    client: FlaskClient, accounts: Accounts, uow_isolation: t.Any
) -> None:
    """A committed transfer's notification is captured as a task; an
    overdraft's is not; running the captured task delivers it once.
    """
    assert transfer(client, accounts, 300).status_code == 201
    assert transfer(client, accounts, 5000).status_code == 409
    captured = [(task.name, task.args) for task in uow_isolation.tasks]
    assert captured == [
        ("example_app.send_notification", ("alice sent 300 cents to bob.",))
    ]
    assert client.get("/notifications").json == {"notifications": []}
    assert uow_isolation.run_tasks() == 1
    assert client.get("/notifications").json == {
        "notifications": ["alice sent 300 cents to bob."]
    }
