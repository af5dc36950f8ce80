"""Read replicas on both backends: which requests read from a replica, and
what happens when one tries to write there.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import signals
from flask_uow import UnitOfWork
from flask_uow.testing import Isolation

from .models import Item
from .replication import app_factory
from .replication import AppFactory
from .replication import create_tables
from .replication import names
from .replication import Pair
from .replication import postgresql_pair
from .replication import served_by
from .replication import sqlite_pair


@pytest.fixture
def pair(backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Pair:
    """A primary and its replica on ``backend``, with empty test tables."""
    if backend == "sqlite":
        return sqlite_pair(tmp_path)
    return postgresql_pair(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def make_replicated(
    uow: UnitOfWork, pair: Pair, tmp_path: pathlib.Path
) -> cabc.Iterator[AppFactory]:
    """Build apps whose default engine has *pair*'s replica."""
    make, finish = app_factory(uow, pair, tmp_path)
    yield make
    finish()


@pytest.fixture
def replicated_app(make_replicated: AppFactory) -> Flask:
    """An app whose default engine has a replica (not named ``app``: the
    pytest-flask plugin would push a request context of it for each test).
    """
    return make_replicated()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_safe_requests_read_from_the_replica(
    replicated_app: Flask, method: str
) -> None:
    """The unit of a GET or HEAD request reads from the replica."""
    response = replicated_app.test_client().open("/items", method=method)
    assert response.status_code == 200
    if method == "GET":
        assert response.json == {"names": [], "server": "replica"}


def test_other_requests_use_the_primary(replicated_app: Flask, pair: Pair) -> None:
    """A POST request's unit reads and writes on the primary."""
    response = replicated_app.test_client().post("/items", data={"name": "a"})
    assert response.status_code == 201
    assert response.json == {"names": ["a"], "server": "primary"}
    assert names(pair.primary) == ["a"]


@pytest.mark.parametrize("path", ["/write", "/write-core", "/write-text"])
def test_a_write_in_a_get_view_fails_clearly(
    replicated_app: Flask, pair: Pair, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A GET view that writes gets an error saying how to use the primary;
    nothing is written.
    """
    response = replicated_app.test_client().get(path)
    assert response.status_code == 500
    error = caplog.records[-1].exc_info[1]  # type: ignore[index]
    assert isinstance(error, RuntimeError)
    assert f"The GET request to '{path}' tried to write to the database" in str(error)
    assert "a GET, HEAD or OPTIONS request is READ ONLY" in str(error)
    assert "@uow.primary" in str(error)
    assert names(pair.primary) == names(pair.replica) == []


def test_a_primary_view_writes_in_a_get_request(
    replicated_app: Flask, pair: Pair
) -> None:
    """A view marked with @uow.primary runs its unit on the primary."""
    response = replicated_app.test_client().get("/write-primary")
    assert response.json == {"names": ["from get"], "server": "primary"}
    assert names(pair.primary) == ["from get"]


def test_primary_works_above_the_route_decorator(
    replicated_app: Flask, uow: UnitOfWork
) -> None:
    """@uow.primary marks the view itself, so it works above @app.get too."""

    @uow.primary
    @replicated_app.get("/above")
    def above() -> str:
        return served_by(uow.session())

    assert replicated_app.test_client().get("/above").get_data(as_text=True) == (
        "primary"
    )


def test_a_transaction_in_a_get_view_uses_the_primary(
    replicated_app: Flask, pair: Pair
) -> None:
    """uow.transaction() in a GET view writes on the primary, the unit reads
    from the primary after it, and the client gets a token for its write.
    """
    client = replicated_app.test_client()
    response = client.get("/block")
    assert client.get_cookie("uow_ryw") is not None
    assert response.json == {
        "names": ["in block"],
        "server": "primary",
        "before": "replica",
    }
    assert names(pair.primary) == ["in block"]


def test_signals_tell_the_role(replicated_app: Flask) -> None:
    """after_begin names the engine and says whether it is a replica."""
    seen: list[tuple[str | None, str]] = []

    def receiver(sender: Flask, **extra: t.Any) -> None:
        seen.append((extra["engine"], extra["role"]))

    with signals.after_begin.connected_to(receiver, replicated_app):
        client = replicated_app.test_client()
        client.get("/items")
        client.post("/items", data={"name": "a"})
    assert seen == [("default", "replica"), ("default", "primary")]


def test_code_outside_requests_uses_the_primary(
    replicated_app: Flask, uow: UnitOfWork, pair: Pair
) -> None:
    """Outside requests (CLI commands, jobs) the unit uses the primary."""
    with replicated_app.app_context():
        assert served_by(uow.session()) == "primary"
        with uow.transaction() as session:
            session.add(Item(name="job"))
        assert served_by(uow.session()) == "primary"
    assert names(pair.primary) == ["job"]


def test_isolated_tests_read_their_own_writes(
    replicated_app: Flask, pair: Pair
) -> None:
    """Under test isolation, GET requests read the isolated primary
    connection, so a test sees what it wrote.
    """
    with Isolation(replicated_app):
        client = replicated_app.test_client()
        client.post("/items", data={"name": "a"})
        assert client.get("/items").json == {"names": ["a"], "server": "primary"}
    assert names(pair.primary) == []


def test_no_replicas_no_routing(make_replicated: AppFactory, pair: Pair) -> None:
    """An engine entry with an empty replica list reads from the primary."""
    app = make_replicated(
        UOW_ENGINES={"default": {"url": pair.primary, "replicas": []}}
    )
    assert app.test_client().get("/items").json == {"names": [], "server": "primary"}


def test_replicas_are_taken_in_turn(uow: UnitOfWork, tmp_path: pathlib.Path) -> None:
    """Units read from the replicas of an engine in turn (round-robin)."""
    pair = sqlite_pair(tmp_path)
    second = f"sqlite:///{tmp_path / 'second.db'}"
    create_tables(second)
    make, finish = app_factory(uow, pair, tmp_path)
    app = make(
        UOW_ENGINES={
            "default": {"url": pair.primary, "replicas": [pair.replica, second]}
        }
    )

    @app.get("/file")
    def file() -> str:
        rows = uow.session.execute(sa.text("PRAGMA database_list")).all()
        return pathlib.Path(rows[0][2]).name

    client = app.test_client()
    served = [client.get("/file").get_data(as_text=True) for _ in range(4)]
    finish()
    assert served == ["replica.db", "second.db"] * 2


@pytest.mark.parametrize("isolated", [False, True])
def test_signals_name_the_engine_without_replicas(
    flask_app: Flask, uow: UnitOfWork, isolated: bool
) -> None:
    """Without replicas, after_begin names the engine, with role primary,
    also under test isolation.
    """
    seen: list[tuple[str | None, str]] = []

    @flask_app.get("/count")
    def count() -> str:
        return str(uow.session.scalar(sa.select(sa.func.count(Item.id))))

    def receiver(sender: Flask, **extra: t.Any) -> None:
        seen.append((extra["engine"], extra["role"]))

    with signals.after_begin.connected_to(receiver, flask_app):
        if isolated:
            with Isolation(flask_app):
                flask_app.test_client().get("/count")
        else:
            flask_app.test_client().get("/count")
    assert seen == [("default", "primary")]


def test_signals_name_no_engine_for_an_outside_bind(
    flask_app: Flask, uow: UnitOfWork, db_url: str
) -> None:
    """A transaction on an engine that is not in UOW_ENGINES is reported
    with engine None.
    """
    other = sa.create_engine(db_url, poolclass=sa.NullPool)
    seen: list[tuple[str | None, str]] = []

    @flask_app.get("/other")
    def on_other() -> str:
        options = {"bind": other}
        return str(uow.session.scalar(sa.text("SELECT 1"), bind_arguments=options))

    def receiver(sender: Flask, **extra: t.Any) -> None:
        seen.append((extra["engine"], extra["role"]))

    with signals.after_begin.connected_to(receiver, flask_app):
        assert flask_app.test_client().get("/other").get_data(as_text=True) == "1"
    other.dispose()
    assert seen == [(None, "primary")]


def test_recorded_statements_say_which_server_ran_them(
    make_replicated: AppFactory,
) -> None:
    """With recording on, each statement's record names its engine and
    whether the primary or a replica ran it.
    """
    app = make_replicated(UOW_RECORD_QUERIES=True)
    uow: UnitOfWork = app.extensions["uow"]
    seen: list[set[tuple[str, str]]] = []

    @app.after_request
    def look(response: t.Any) -> t.Any:
        seen.append({(r.engine, r.role) for r in uow.recorded_queries})
        return response

    assert app.test_client().post("/items", data={"name": "a"}).status_code == 201
    assert app.test_client().get("/items").status_code == 200
    assert seen == [{("default", "primary")}, {("default", "replica")}]
