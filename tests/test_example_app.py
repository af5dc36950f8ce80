"""The example ledger app, as a user of it would see it."""

from __future__ import annotations

import collections.abc as cabc
import pathlib

import pytest
import sqlalchemy as sa
from flask import Flask

from example_app import create_app
from example_app import uow
from example_app.models import Base

from .conftest import check_no_leaks
from .conftest import Database
from .conftest import watch_pools


@pytest.fixture
def ledger(db_url: str, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """The ledger app on the test database, with two accounts."""
    app = create_app({"UOW_ENGINES": {"default": db_url}})
    watch = watch_pools(uow, app)
    client = app.test_client()
    client.post("/accounts", json={"name": "alice", "balance": 1000})
    client.post("/accounts", json={"name": "bob"})
    yield app
    check_no_leaks(uow, app, watch)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    Base.metadata.drop_all(engine)
    engine.dispose()
    uow.dispose_engines(app)


def test_transfer_moves_money(ledger: Flask, db: Database) -> None:
    """A transfer updates both balances and writes two entries."""
    response = ledger.test_client().post(
        "/transfers", json={"from": 1, "to": 2, "amount": 300}
    )
    assert response.status_code == 201
    assert db.scalar("SELECT balance FROM accounts WHERE name = 'alice'") == 700
    assert db.scalar("SELECT balance FROM accounts WHERE name = 'bob'") == 300
    assert db.scalar("SELECT sum(amount) FROM entries") == 0
    assert db.scalar("SELECT count(*) FROM entries") == 2


def test_overdraft_is_409_and_writes_nothing(ledger: Flask, db: Database) -> None:
    """An overdraft is refused with 409 and leaves balances as they were."""
    response = ledger.test_client().post(
        "/transfers", json={"from": 1, "to": 2, "amount": 5000}
    )
    assert response.status_code == 409
    assert "cannot cover" in response.get_json()["error"]
    assert db.scalar("SELECT balance FROM accounts WHERE name = 'alice'") == 1000
    assert db.scalar("SELECT count(*) FROM entries") == 0


def test_duplicate_account_is_409(ledger: Flask, db: Database) -> None:
    """Opening an account with a taken name fails at commit and is a 409."""
    response = ledger.test_client().post("/accounts", json={"name": "alice"})
    assert response.status_code == 409
    assert db.scalar("SELECT count(*) FROM accounts") == 2


def test_audit_log_records_who_changed_what(ledger: Flask, db: Database) -> None:
    """A transfer is audited in the same transaction: one row per change,
    with the actor from the X-User header and old and new values.
    """
    client = ledger.test_client()
    response = client.post(
        "/transfers",
        json={"from": 1, "to": 2, "amount": 300},
        headers={"X-User": "carol"},
    )
    assert response.status_code == 201
    entries = client.get("/audit").json["entries"]  # type: ignore[index]
    transfer = [e for e in entries if e["actor"] == "carol"]
    assert sorted(
        (e["operation"], e["table_name"], e["changes"]) for e in transfer
    ) == [
        ("insert", "entries", '{"account_id": [null, 1], "amount": [null, -300]}'),
        ("insert", "entries", '{"account_id": [null, 2], "amount": [null, 300]}'),
        ("update", "accounts", '{"balance": [0, 300]}'),
        ("update", "accounts", '{"balance": [1000, 700]}'),
    ]
    opened = [e for e in entries if e["actor"] == "anonymous"]
    assert [(e["operation"], e["row_id"]) for e in opened] == [
        ("insert", "1"),
        ("insert", "2"),
    ]


def test_overdraft_is_not_audited(ledger: Flask, db: Database) -> None:
    """A rolled back transfer leaves no audit row."""
    before = db.scalar("SELECT count(*) FROM audit_log")
    client = ledger.test_client()
    response = client.post("/transfers", json={"from": 1, "to": 2, "amount": 5000})
    assert response.status_code == 409
    assert db.scalar("SELECT count(*) FROM audit_log") == before


def test_pages_and_bad_input(ledger: Flask) -> None:
    """The HTML page lists accounts; bad JSON gets a 400."""
    client = ledger.test_client()
    assert b"alice" in client.get("/").data
    assert [a["name"] for a in client.get("/accounts").json["accounts"]] == [  # type: ignore[index]
        "alice",
        "bob",
    ]
    assert client.post("/transfers", data="nope").status_code == 400
    assert client.post("/transfers", json={"from": "1"}).status_code == 400
    assert client.post("/accounts", json={"name": ""}).status_code == 400
    missing = client.post("/transfers", json={"from": 1, "to": 9, "amount": 1})
    assert missing.status_code == 404
