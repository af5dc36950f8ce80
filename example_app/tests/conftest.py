"""Fixtures for the ledger's tests: each test runs isolated, so whatever it
commits is rolled back when it ends.
"""

from __future__ import annotations

import collections.abc as cabc
import os

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app import uow


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``LEDGER_TEST_DATABASE_URL``, or a SQLite file for this test run."""
    default = f"sqlite:///{tmp_path_factory.mktemp('ledger')}/ledger.db"
    return os.environ.get("LEDGER_TEST_DATABASE_URL", default)


@pytest.fixture
def app(database_url: str) -> cabc.Iterator[Flask]:
    """The ledger app; pytest-flask's ``client`` fixture uses it."""
    app = create_app({"TESTING": True, "UOW_ENGINES": {"default": database_url}})
    yield app
    uow.dispose_engines(app)


@pytest.fixture(autouse=True)
def _isolated(uow_isolation: object) -> None:
    """Every test is isolated (the fixture comes from flask_uow's plugin)."""


@pytest.fixture
def accounts(client: FlaskClient) -> dict[str, int]:
    """Two accounts, alice with 1000 cents and bob with none, by name: their
    ids differ from test to test on PostgreSQL, whose sequences are not
    rolled back.
    """
    alice = client.post("/accounts", json={"name": "alice", "balance": 1000})
    bob = client.post("/accounts", json={"name": "bob"})
    return {"alice": alice.json["id"], "bob": bob.json["id"]}  # type: ignore[index]
