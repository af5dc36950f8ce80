"""The example app sends its transfer notifications through the outbox to a
real Celery worker on a real Redis (issue 22), on SQLite and PostgreSQL: a
committed transfer's notification is delivered exactly once, an overdraft's
never.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask

from example_app import create_app
from example_app import uow
from example_app.models import Base

from .redis_server import RedisServer
from .task_workers import Effects
from .task_workers import Workers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ledger(
    db_url: str, redis_server: RedisServer, no_outbox_tables: None
) -> cabc.Iterator[Flask]:
    """The ledger on the test database, its notifications sent to the test's
    Redis; its tables dropped afterwards.
    """
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    Base.metadata.drop_all(engine)
    app = create_app(
        {
            "UOW_ENGINES": {"default": db_url},
            "LEDGER_TASKS_BROKER": redis_server.url,
            "UOW_OUTBOX_GRACE": 30,  # The fast path alone publishes.
        }
    )
    try:
        yield app
    finally:
        uow.dispose_engines(app)
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_notification_delivered_once_by_a_celery_worker(
    ledger: Flask,
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
) -> None:
    """Transfers through the web app; the worker (``celery -A
    example_app.worker``) delivers the committed one's notification once,
    recorded in ``sent_notifications`` and ``uow_processed``.
    """
    env = {"LEDGER_DATABASE_URL": db_url, "LEDGER_TASKS_BROKER": redis_server.url}
    task_workers.celery(db_url, redis_server, app="example_app.worker:celery", env=env)
    client = ledger.test_client()
    alice, bob = (f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}")
    ids = [
        client.post("/accounts", json={"name": name, "balance": balance}).json["id"]  # type: ignore[index]
        for name, balance in ((alice, 1000), (bob, 0))
    ]
    ok = client.post("/transfers", json={"from": ids[0], "to": ids[1], "amount": 300})
    assert ok.status_code == 201
    overdraft = {"from": ids[0], "to": ids[1], "amount": 5000}
    assert client.post("/transfers", json=overdraft).status_code == 409
    database = Effects(sa.create_engine(db_url, poolclass=sa.NullPool))
    try:
        expected = [f"{alice} sent 300 cents to {bob}."]
        messages = wait_for_messages(database, 1)
        assert messages == expected
        assert database.scalar("SELECT count(*) FROM uow_processed") == 1
        assert (
            database.scalar("SELECT count(*) FROM uow_outbox WHERE sent_at IS NULL")
            == 0
        )
    finally:
        database.engine.dispose()


def wait_for_messages(database: Effects, count: int) -> list[str]:
    """The delivered messages, once there are *count* of them (or after 20 s),
    and after half a second more for a late duplicate.
    """
    import time

    query = "SELECT count(*) FROM sent_notifications"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and t.cast(int, database.scalar(query)) < count:
        time.sleep(0.05)
    time.sleep(0.5)
    with database.engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT message FROM sent_notifications")))
