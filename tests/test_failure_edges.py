"""The commit guard, the configuration and the replica log under failure
(issue 21, item 5).
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import TransactionAbortedError
from flask_uow import UnitOfWork
from flask_uow._replica_config import read_only_per_transaction

from .conftest import AppFactory
from .conftest import Database
from .deploying import AppFactory as DeployedAppFactory
from .deploying import create_tables
from .models import Item
from .pgbouncer import Pooled


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_driver_connection_closed_under_the_session(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A driver connection closed under the session (as Django's
    ``connection.close()`` does) is a lost connection: the transaction raises
    TransactionAbortedError marked transient, not a driver error, and the
    next transaction works.
    """
    app = flask_app
    with app.app_context():
        with pytest.raises(TransactionAbortedError) as info:
            with uow.transaction() as session:
                session.add(Item(name="lost"))
                session.flush()
                session.connection().connection.dbapi_connection.close()  # type: ignore[union-attr]
        assert info.value.connection_lost
        with uow.transaction() as session:
            session.add(Item(name="after"))
    assert db.names() == ["after"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_retries_survive_a_closed_driver_connection(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """``transactional(retries=...)`` runs the work again after its driver
    connection was closed under it, and commits it once.
    """
    app = flask_app
    attempts: list[int] = []

    @uow.transactional(retries=2)
    def work() -> None:
        attempts.append(1)
        uow.session.add(Item(name=f"try{len(attempts)}"))
        uow.session.flush()
        if len(attempts) == 1:
            uow.session.connection().connection.dbapi_connection.close()  # type: ignore[union-attr]

    with app.app_context():
        work()
    assert len(attempts) == 2
    assert db.names() == ["try2"]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("key", ["UOW_RETRY_DELAY", "UOW_RETRY_MAX_DELAY"])
def test_a_huge_retry_delay_names_the_key(
    make_app: AppFactory, uow: UnitOfWork, key: str
) -> None:
    """An integer too large for a float is refused like any bad delay, with
    an error that names the key.
    """
    app = make_app(init=False, **{key: 10**400})
    with pytest.raises((TypeError, ValueError), match=key):
        uow.init_app(app)


def test_replica_back_is_logged_at_warning(
    make_deployed_app: DeployedAppFactory,
    pooled: Pooled,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The message that a replica is used again is a WARNING, the pair of
    the one that says it cannot be used, so both reach gunicorn's log.

    The replica is the database reached through PgBouncer, which is made to
    refuse clients and then let them in again.
    """
    create_tables(pooled.direct)
    app = make_deployed_app(
        {
            "default": {
                "url": pooled.direct,
                "replicas": [
                    {"url": pooled.url(), "connect_args": {"prepare_threshold": None}}
                ],
            }
        }
    )
    client = app.test_client()
    caplog.set_level(logging.INFO, logger=app.logger.name)
    assert client.get("/items").status_code == 200
    pooled.bouncer.down(pooled.alias)
    try:
        assert client.get("/items").status_code == 200  # From the primary.
    finally:
        pooled.bouncer.up(pooled.alias)
    assert client.get("/items").status_code == 200  # The replica again.
    messages = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == app.logger.name and "replica" in r.getMessage()
    ]
    assert [level for level, _ in messages] == [logging.WARNING, logging.WARNING]
    assert "cannot be used" in messages[0][1]
    assert "used again" in messages[1][1]


def test_replica_reads_are_read_only_per_transaction(
    make_deployed_app: DeployedAppFactory, pooled: Pooled
) -> None:
    """A replica connection carries no READ ONLY session state: its
    transactions are READ ONLY one by one, so the same server connection,
    handed to the primary by the pooler, writes.
    """
    create_tables(pooled.direct)
    url = pooled.url()
    app = make_deployed_app(
        {
            "default": {
                "url": url,
                "replicas": [url],
                "connect_args": {"prepare_threshold": None},
            }
        }
    )
    client = app.test_client()
    assert client.get("/items").json == {"count": 0, "read_only": "on"}
    assert pooled.bouncer.read_only_servers(pooled.alias) == {}
    assert client.post("/items", data={"name": "a"}).status_code == 201


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("UOW_REPLICA_WAIT", 10**400),
        ("UOW_REPLICA_BACKOFF", 10**400),
        ("UOW_REPLICA_MAX_LAG", float("nan")),
        ("UOW_ENGINES", {"default": {"url": "sqlite://", "pool_timeout": 10**400}}),
    ],
)
def test_other_huge_numbers_name_their_key(
    make_app: AppFactory, uow: UnitOfWork, key: str, value: object
) -> None:
    """The replica keys and the engines' pool timeouts refuse a number a
    float cannot hold, naming the key, rather than failing mid-request.
    """
    app = make_app(init=False, **{key: value})
    with pytest.raises(
        ValueError, match="pool_timeout" if key == "UOW_ENGINES" else key
    ):
        uow.init_app(app)


def test_read_only_per_transaction_for_other_drivers(postgresql_database: str) -> None:
    """For PostgreSQL drivers that cannot begin READ ONLY themselves, each
    transaction of a replica engine is made READ ONLY by a statement that
    lasts until it ends; the session's default stays read-write, and
    AUTOCOMMIT connections (the replica status query) are left alone.
    """
    engine = sa.create_engine(postgresql_database, poolclass=sa.NullPool)
    read_only_per_transaction(engine)
    try:
        with engine.connect() as conn:
            inside = conn.exec_driver_sql(
                "SELECT current_setting('transaction_read_only'),"
                " current_setting('default_transaction_read_only')"
            ).one()
            conn.rollback()
            conn.execution_options(isolation_level="AUTOCOMMIT")
            outside = conn.exec_driver_sql("SHOW transaction_read_only").scalar()
    finally:
        engine.dispose()
    assert tuple(inside) == ("on", "off")
    assert outside == "off"
