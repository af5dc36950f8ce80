"""Read-your-writes on a real PostgreSQL primary and streaming replica, whose
replay the tests pause and resume; and the time window used on SQLite.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import pathlib
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import Response
from itsdangerous import URLSafeSerializer

from flask_uow import UnitOfWork

from .models import Item
from .pgcluster import Cluster
from .replication import app_factory
from .replication import AppFactory
from .replication import DATABASE
from .replication import names
from .replication import Pair
from .replication import postgresql_pair
from .replication import served_by
from .replication import sqlite_pair

COOKIE = "uow_ryw"


@pytest.fixture
def pair(pg_cluster: Cluster) -> cabc.Iterator[Pair]:
    """The PostgreSQL primary and replica with empty test tables; replay and
    the replica are restored after the test.
    """
    yield postgresql_pair(pg_cluster)
    pg_cluster.reset()


@pytest.fixture
def make_replicated(
    uow: UnitOfWork, pair: Pair, tmp_path: pathlib.Path
) -> cabc.Iterator[AppFactory]:
    make, finish = app_factory(uow, pair, tmp_path)
    yield make
    finish()


def test_a_client_reads_its_writes_before_the_replica_has_them(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """While replay is paused, the client that wrote reads from the primary
    and another client reads the replica's older data; once the replica has
    replayed the write, both read from it and the token is dropped.
    """
    app = make_replicated()
    writer, other = app.test_client(), app.test_client()
    pg_cluster.pause_replay()
    response = writer.post("/items", data={"name": "a"})
    assert response.status_code == 201
    token = writer.get_cookie(COOKIE)
    assert token is not None

    response = writer.get("/items")
    assert response.json == {"names": ["a"], "server": "primary"}
    assert "Set-Cookie" not in response.headers  # The token stays as it was.
    assert other.get("/items").json == {"names": [], "server": "replica"}
    still = writer.get_cookie(COOKIE)
    assert still is not None and still.value == token.value

    pg_cluster.resume_replay()
    pg_cluster.wait_replayed()
    assert writer.get("/items").json == {"names": ["a"], "server": "replica"}
    assert writer.get_cookie(COOKIE) is None
    assert other.get("/items").json == {"names": ["a"], "server": "replica"}


def test_reads_wait_for_the_replica_when_configured(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """With UOW_REPLICA_WAIT, a client whose write the replica has not
    replayed waits for it instead of reading from the primary.
    """
    app = make_replicated(UOW_REPLICA_WAIT=30)
    client = app.test_client()
    pg_cluster.pause_replay()
    client.post("/items", data={"name": "a"})
    resume = threading.Timer(0.1, pg_cluster.resume_replay)
    resume.start()
    try:
        assert client.get("/items").json == {"names": ["a"], "server": "replica"}
    finally:
        resume.join()


def test_reads_do_not_wait_for_a_replica_that_is_down(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """A replica that goes away while a read waits for it is given up."""
    app = make_replicated(UOW_REPLICA_WAIT=30)
    client = app.test_client()
    pg_cluster.pause_replay()
    client.post("/items", data={"name": "a"})
    stop = threading.Timer(0.1, pg_cluster.replica.stop)
    stop.start()
    try:
        assert client.get("/items").json == {"names": ["a"], "server": "primary"}
    finally:
        stop.join()


def test_a_stopped_replica_is_skipped(
    make_replicated: AppFactory,
    pg_cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the replica stopped, GET requests are answered from the primary
    without an error, and the failure is logged once; when it is back, reads
    return to it.
    """
    app = make_replicated(UOW_REPLICA_BACKOFF=0)
    client = app.test_client()
    assert client.get("/items").get_json()["server"] == "replica"
    pg_cluster.replica.stop()
    caplog.set_level(logging.INFO, logger=app.logger.name)
    for _ in range(3):
        response = client.get("/items")
        assert response.status_code == 200
        assert response.json == {"names": [], "server": "primary"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "replicas'][0]" in warnings[0].getMessage()
    assert "cannot be used" in warnings[0].getMessage()

    pg_cluster.reset()
    assert client.get("/items").json == {"names": [], "server": "replica"}
    assert "is used again" in caplog.records[-1].getMessage()


def test_a_failed_replica_waits_for_its_backoff(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """A replica that failed is not tried again before its back-off ends."""
    app = make_replicated(UOW_REPLICA_BACKOFF=3600)
    client = app.test_client()
    pg_cluster.replica.stop()
    assert client.get("/items").get_json()["server"] == "primary"
    pg_cluster.reset()
    assert client.get("/items").get_json()["server"] == "primary"


def test_a_lagging_replica_is_skipped(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """A replica whose lag exceeds UOW_REPLICA_MAX_LAG is skipped, also for
    clients without a token.
    """
    app = make_replicated(UOW_REPLICA_MAX_LAG=0.05)
    writer, other = app.test_client(), app.test_client()
    assert other.get("/items").get_json()["server"] == "replica"
    pg_cluster.pause_replay()
    writer.post("/items", data={"name": "a"})
    pg_cluster.wait_received()
    time.sleep(0.1)  # The replica now lags by more than the limit.
    assert other.get("/items").json == {"names": ["a"], "server": "primary"}


def test_no_lag_limit(make_replicated: AppFactory, pg_cluster: Cluster) -> None:
    """With UOW_REPLICA_MAX_LAG None, a lagging replica serves token-less
    clients.
    """
    app = make_replicated(UOW_REPLICA_MAX_LAG=None)
    writer, other = app.test_client(), app.test_client()
    pg_cluster.pause_replay()
    writer.post("/items", data={"name": "a"})
    pg_cluster.wait_received()
    time.sleep(0.05)
    assert other.get("/items").json == {"names": [], "server": "replica"}


def test_a_tampered_token_is_ignored(make_replicated: AppFactory) -> None:
    """A cookie whose signature does not verify counts as no token, and the
    response deletes it.
    """
    app = make_replicated()
    client = app.test_client()
    client.post("/items", data={"name": "a"})
    signed = client.get_cookie(COOKIE)
    assert signed is not None
    client.set_cookie(COOKIE, signed.value[:-2] + "xx")
    response = client.get("/items")
    assert response.get_json()["server"] == "replica"
    assert client.get_cookie(COOKIE) is None


def test_a_forged_future_position_only_costs_primary_reads(
    make_replicated: AppFactory,
) -> None:
    """A token for a position the primary has not reached (forged with the
    secret key) sends that client's reads to the primary, nothing else.
    """
    app = make_replicated()
    forged = URLSafeSerializer(
        str(app.secret_key), salt="flask-uow.read-your-writes"
    ).dumps({"lsn": {"default": 2**62}, "until": {}})
    client, other = app.test_client(), app.test_client()
    client.set_cookie(COOKIE, forged)
    assert client.get("/items").json == {"names": [], "server": "primary"}
    assert other.get("/items").json == {"names": [], "server": "replica"}


def test_a_read_only_post_sets_no_token(make_replicated: AppFactory) -> None:
    """A request that commits without writing hands out no token."""
    app = make_replicated()

    @app.post("/look")
    def look() -> str:
        app.extensions["uow"].session.execute(sa.select(sa.literal(1)))
        return "looked"

    client = app.test_client()
    assert client.post("/look").status_code == 200
    assert client.get_cookie(COOKIE) is None


@pytest.fixture
def sqlite_app(uow: UnitOfWork, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    make, finish = app_factory(uow, sqlite_pair(tmp_path), tmp_path)
    yield make(UOW_REPLICA_WINDOW=0.2)
    finish()


def test_without_wal_positions_a_time_window_applies(sqlite_app: Flask) -> None:
    """On SQLite, which has no WAL position to compare, a client that wrote
    reads from the primary for UOW_REPLICA_WINDOW seconds, then from the
    replica again (whether or not it has the write: the weaker guarantee).
    """
    writer, other = sqlite_app.test_client(), sqlite_app.test_client()
    writer.post("/items", data={"name": "a"})
    assert writer.get("/items").json == {"names": ["a"], "server": "primary"}
    assert other.get("/items").json == {"names": [], "server": "replica"}
    time.sleep(0.25)
    assert writer.get("/items").json == {"names": [], "server": "replica"}
    assert writer.get_cookie(COOKIE) is None


@pytest.mark.parametrize(
    ("statement", "token"),
    [
        ("SELECT 1", False),
        ("  (select 2)", False),
        ("UPDATE items SET name = name", True),
        ("DELETE FROM items", True),
        ("CREATE TEMPORARY TABLE t (x int)", True),
    ],
)
def test_textual_statements_that_write_set_a_token(
    make_replicated: AppFactory, statement: str, token: bool
) -> None:
    """A textual statement counts as a write unless it starts with a reading
    keyword such as SELECT.
    """
    app = make_replicated()

    @app.post("/sql")
    def run_sql() -> str:
        app.extensions["uow"].session.execute(sa.text(statement))
        return "done"

    client = app.test_client()
    assert client.post("/sql").status_code == 200
    assert (client.get_cookie(COOKIE) is not None) is token


def test_orm_deletes_and_core_updates_set_a_token(
    make_replicated: AppFactory,
) -> None:
    """Deleting through the ORM and updating through Core are writes."""
    app = make_replicated()
    uow: UnitOfWork = app.extensions["uow"]

    @app.post("/delete")
    def delete() -> str:
        for item in uow.session.scalars(sa.select(Item)):
            uow.session.delete(item)
        return "deleted"

    @app.post("/update")
    def update() -> str:
        uow.session.execute(sa.update(Item).values(name="b"))
        return "updated"

    client = app.test_client()
    client.post("/items", data={"name": "a"})
    for path in ("/delete", "/update"):
        client.delete_cookie(COOKIE)
        assert client.post(path).status_code == 200
        assert client.get_cookie(COOKIE) is not None


def test_a_token_with_a_bad_shape_is_ignored(make_replicated: AppFactory) -> None:
    """A signed cookie whose content is not a token counts as no token."""
    app = make_replicated()
    bad = URLSafeSerializer(str(app.secret_key), salt="flask-uow.read-your-writes")
    client = app.test_client()
    client.set_cookie(COOKIE, bad.dumps({"lsn": [1], "until": {}}))
    assert client.get("/items").get_json()["server"] == "replica"
    assert client.get_cookie(COOKIE) is None


def test_reads_wait_at_most_the_configured_time(
    make_replicated: AppFactory, pg_cluster: Cluster
) -> None:
    """When the replica does not catch up within UOW_REPLICA_WAIT, the
    client reads from the primary.
    """
    app = make_replicated(UOW_REPLICA_WAIT=0.02)
    client = app.test_client()
    pg_cluster.pause_replay()
    client.post("/items", data={"name": "a"})
    assert client.get("/items").json == {"names": ["a"], "server": "primary"}


def test_a_commit_in_a_streamed_body_sets_no_cookie(
    make_replicated: AppFactory, pair: Pair
) -> None:
    """A commit made while a streamed body is produced, after the headers,
    is saved; no cookie can be sent for it.
    """
    app = make_replicated()
    uow: UnitOfWork = app.extensions["uow"]

    @app.post("/stream")
    def stream() -> Response:
        session = uow.session()

        def body() -> cabc.Iterator[str]:
            session.add(Item(name="streamed"))
            session.commit()
            yield "done"

        return Response(body())

    client = app.test_client()
    assert client.post("/stream").get_data(as_text=True) == "done"
    assert client.get_cookie(COOKIE) is None
    assert names(pair.primary) == ["streamed"]


def test_replica_engines_used_directly_refuse_writes(
    make_replicated: AppFactory,
) -> None:
    """Outside requests, a write on a replica engine gets the server's own
    error: the replica is read only.
    """
    app = make_replicated()
    uow: UnitOfWork = app.extensions["uow"]
    with app.app_context():
        (engine,) = uow.replica_engines["default"]
        with engine.connect() as conn:
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                conn.execute(sa.insert(Item).values(name="x"))


@pytest.mark.parametrize("path", ["/write", "/write-text"])
def test_a_get_view_that_writes_fails_on_the_primary_too(
    make_replicated: AppFactory,
    pg_cluster: Cluster,
    pair: Pair,
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A GET view that writes fails the same way when the unit reads from the
    primary because the replica has not replayed the client's write.
    """
    app = make_replicated()
    client = app.test_client()
    pg_cluster.pause_replay()
    client.post("/items", data={"name": "a"})
    assert client.get(path).status_code == 500
    error = caplog.records[-1].exc_info[1]  # type: ignore[index]
    assert isinstance(error, RuntimeError)
    assert "@uow.primary" in str(error)
    assert names(pair.primary) == ["a"]


def test_a_post_may_make_its_own_transaction_read_only(
    make_replicated: AppFactory,
) -> None:
    """Outside safe requests, the server's read-only error passes unchanged."""
    app = make_replicated()

    @app.post("/readonly")
    def readonly() -> str:
        session = app.extensions["uow"].session
        session.execute(sa.text("SET TRANSACTION READ ONLY"))
        try:
            session.execute(sa.text("INSERT INTO items (name) VALUES ('x')"))
        except sa.exc.InternalError:
            session.rollback()
            return "refused"
        return "written"

    assert app.test_client().post("/readonly").get_data(as_text=True) == "refused"


def test_an_unreachable_replica_is_skipped_for_another(
    make_replicated: AppFactory,
    pair: Pair,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When a replica cannot be reached, reads go to another replica."""
    missing = sa.make_url(pair.replica).update_query_dict({"host": str(tmp_path)})
    app = make_replicated(
        UOW_ENGINES={
            "default": {
                "url": pair.primary,
                "replicas": [missing.render_as_string(False), pair.replica],
            }
        },
        UOW_REPLICA_BACKOFF=3600,
    )
    client = app.test_client()
    for _ in range(3):
        assert client.get("/items").json == {"names": [], "server": "replica"}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "['replicas'][0]" in warning.getMessage()


def test_a_lost_position_falls_back_to_the_time_window(
    make_replicated: AppFactory,
    pg_cluster: Cluster,
    pair: Pair,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the primary's position cannot be read after a commit (its
    connection was lost), the commit stands, the error is logged, and the
    client reads from the primary for the time window instead.
    """
    app = make_replicated(UOW_REPLICA_WINDOW=3600)
    uow: UnitOfWork = app.extensions["uow"]
    with app.app_context():
        engine = uow.engine

    def kill(conn: sa.Connection, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if "pg_current_wal_lsn" in statement:
            pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            pg_cluster.primary.scalar(f"SELECT pg_terminate_backend({pid})", DATABASE)

    sa.event.listen(engine, "before_cursor_execute", kill)
    client = app.test_client()
    assert client.post("/items", data={"name": "a"}).status_code == 201
    sa.event.remove(engine, "before_cursor_execute", kill)
    assert names(pair.primary) == ["a"]
    assert "could not be read" in caplog.records[-1].getMessage()
    assert client.get("/items").json == {"names": ["a"], "server": "primary"}


OTHER = "replicas_other"
notes = sa.Table(
    "notes",
    sa.MetaData(info={"bind_key": "other"}),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("text", sa.String(50), nullable=False),
)


def test_a_two_phase_commit_gives_a_position_for_each_engine(
    make_replicated: AppFactory, pg_cluster: Cluster, pair: Pair
) -> None:
    """After a two-phase commit over two engines with replicas, the writer
    reads both from the primaries until the replicas have replayed it all.
    """
    if not pg_cluster.primary.scalar(
        f"SELECT count(*) FROM pg_database WHERE datname = '{OTHER}'"
    ):
        pg_cluster.primary.scalar(f'CREATE DATABASE "{OTHER}"')
    other_primary = pg_cluster.primary.url(OTHER).render_as_string(False)
    engine = sa.create_engine(other_primary, poolclass=sa.NullPool)
    notes.metadata.drop_all(engine)
    notes.metadata.create_all(engine)
    engine.dispose()
    pg_cluster.wait_replayed()
    app = make_replicated(
        UOW_ENGINES={
            "default": {"url": pair.primary, "replicas": [pair.replica]},
            "other": {
                "url": other_primary,
                "replicas": [pg_cluster.replica.url(OTHER).render_as_string(False)],
            },
        },
        UOW_TWO_PHASE=True,
    )
    uow: UnitOfWork = app.extensions["uow"]

    @app.post("/both")
    def write_both() -> str:
        uow.session.add(Item(name="a"))
        uow.session.execute(sa.insert(notes).values(text="n"))
        return "written"

    @app.get("/both")
    def read_both() -> dict[str, t.Any]:
        session = uow.session()
        query = sa.select(notes.c.text, sa.func.pg_is_in_recovery())
        texts = session.execute(query).all()
        return {
            "items": list(session.scalars(sa.select(Item.name))),
            "notes": [text for text, _ in texts],
            "item_server": served_by(session),
            "notes_on_replica": bool(texts) and texts[0][1],
        }

    writer = app.test_client()
    pg_cluster.pause_replay()
    assert writer.post("/both").status_code == 200
    assert writer.get("/both").json == {
        "items": ["a"],
        "notes": ["n"],
        "item_server": "primary",
        "notes_on_replica": False,
    }
    pg_cluster.resume_replay()
    pg_cluster.wait_replayed()
    assert writer.get("/both").json == {
        "items": ["a"],
        "notes": ["n"],
        "item_server": "replica",
        "notes_on_replica": True,
    }
    assert writer.get_cookie(COOKIE) is None
