"""Two PostgreSQL servers that can prepare transactions, for the tests of
two-phase commit, and the tables those tests use.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import shutil
import tempfile
import typing as t
import uuid
import warnings

import pytest
import sqlalchemy as sa

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs, see conftest.py
    import pgserver

#: The same ledger table in every database; "other" and "third" are extra
#: engines, routed by bind key.
BIND_KEYS = ("default", "other", "third")
ACCOUNTS = {
    key: sa.Table(
        "accounts",
        sa.MetaData(info={} if key == "default" else {"bind_key": key}),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("balance", sa.Integer, nullable=False),
    )
    for key in BIND_KEYS
}


def _start(folder: pathlib.Path) -> t.Any:
    """Start a server whose ``max_prepared_transactions`` is 20: start it
    once, set the option, and start it again (it needs a restart).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
        engine = sa.create_engine(_url(server), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("ALTER SYSTEM SET max_prepared_transactions = 20")
        engine.dispose()
        server.cleanup()
        return pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]


def _url(server: t.Any) -> str:
    return str(server.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def prepared_servers() -> cabc.Iterator[tuple[sa.URL, sa.URL]]:
    """Two servers (Unix sockets only) with prepared transactions enabled,
    started for the tests that need them and stopped after the run. If they
    cannot start, those tests fail.

    Their data lives in a temporary folder of their own, outside pytest's
    base folder, whose clean-up by a concurrent pytest run must not reach them.
    """
    folder = pathlib.Path(tempfile.mkdtemp(prefix="flask_uow_twophase_"))
    servers: list[t.Any] = []
    try:
        for name in ("a", "b"):
            servers.append(_start(folder / name))
    except Exception as e:  # pragma: no cover - only when the server breaks
        for server in servers:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"Could not start PostgreSQL servers with 'pgserver' ({e!r}).")
    try:
        yield sa.make_url(_url(servers[0])), sa.make_url(_url(servers[1]))
    finally:
        for server in servers:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def prepared_gids(url: str) -> list[str]:
    """The prepared transactions in the database at *url*."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(
                conn.exec_driver_sql(
                    "SELECT gid FROM pg_prepared_xacts"
                    " WHERE database = current_database()"
                ).scalars()
            )
    finally:
        engine.dispose()


def balances(url: str) -> dict[int, int]:
    """The accounts of the database at *url*, read from a new connection."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, balance FROM accounts"))
            return {row.id: row.balance for row in rows}
    finally:
        engine.dispose()


@pytest.fixture
def two_phase_urls(
    prepared_servers: tuple[sa.URL, sa.URL],
) -> cabc.Iterator[dict[str, str]]:
    """A fresh database per engine: "default" on the first server, "other"
    and "third" on the second, each with an empty accounts table. After the
    test, no prepared transaction may be left in them.
    """
    first, second = prepared_servers
    where = {"default": first, "other": second, "third": second}
    urls = {}
    for key, server in where.items():
        name = f"twophase_{key}_{uuid.uuid4().hex[:8]}"
        _admin(server, f'CREATE DATABASE "{name}"')
        urls[key] = server.set(database=name).render_as_string(False)
        engine = sa.create_engine(urls[key], poolclass=sa.NullPool)
        ACCOUNTS[key].metadata.create_all(engine)
        engine.dispose()
    try:
        yield urls
        left = {key: prepared_gids(url) for key, url in urls.items()}
        assert left == {key: [] for key in urls}, "prepared transactions left"
    finally:
        for key, url in urls.items():
            for gid in prepared_gids(url):
                engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.exec_driver_sql(f"ROLLBACK PREPARED '{gid}'")
                engine.dispose()
            database = sa.make_url(url).database
            _admin(where[key], f'DROP DATABASE "{database}" WITH (FORCE)')


def _admin(server: sa.URL, sql: str) -> None:
    engine = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()
