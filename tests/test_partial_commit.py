"""Without two-phase commit: a commit across engines that fails part-way."""

from __future__ import annotations

import collections.abc as cabc
import logging
import pathlib
import uuid
import warnings

import pytest
import sqlalchemy as sa

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item

#: In the "other" database: a child row whose parent is checked at COMMIT.
other_metadata = sa.MetaData(info={"bind_key": "other"})
parents = sa.Table(
    "parents", other_metadata, sa.Column("id", sa.Integer, primary_key=True)
)
children = sa.Table(
    "children",
    other_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "parent_id",
        sa.Integer,
        sa.ForeignKey("parents.id", deferrable=True, initially="DEFERRED"),
    ),
)


@pytest.fixture
def other_url(
    backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> cabc.Iterator[str]:
    """A second database on the same backend, with the parent/child tables."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'other.db'}"
        server = None
    else:
        server = request.getfixturevalue("postgresql_server")
        name = f"flask_uow_other_{uuid.uuid4().hex[:8]}"
        _admin(server, f'CREATE DATABASE "{name}"')
        url = server.set(database=name).render_as_string(False)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    other_metadata.create_all(engine)
    engine.dispose()
    yield url
    if server is not None:
        _admin(server, f'DROP DATABASE "{sa.make_url(url).database}" WITH (FORCE)')


def _admin(server: sa.URL, sql: str) -> None:
    engine = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def test_partial_commit_is_logged(
    make_app: AppFactory,
    uow: UnitOfWork,
    db: Database,
    db_url: str,
    other_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the COMMIT of one engine fails after another engine committed,
    the log names the engines that committed and the one that failed, the
    data shows exactly that, and the request gets the error response.
    SQLAlchemy warns when the session then rolls back the engine that
    committed; the rollback completes.
    """
    app = make_app(UOW_ENGINES={"default": db_url, "other": other_url})
    with app.app_context():
        other = uow.engines["other"]
    if other.dialect.name == "sqlite":
        sa.event.listen(
            other,
            "connect",
            lambda conn, record: conn.execute("PRAGMA foreign_keys = ON"),
        )

    @app.post("/<name>")
    def write(name: str) -> str:
        uow.session.add(Item(name=name))
        uow.session.execute(sa.insert(children).values(parent_id=404))
        return "ok"

    client = app.test_client()
    partial = []
    # SQLAlchemy commits the connections in no fixed order; try until the
    # default engine commits first (each try has even odds).
    for n in range(40):
        caplog.clear()
        with caplog.at_level(logging.ERROR), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert client.post(f"/item{n}").status_code == 500
        logged = [
            r.getMessage() for r in caplog.records if "flask_uow" in r.getMessage()
        ]
        warned = [str(warning.message) for warning in w]
        if f"item{n}" in db.names():
            assert warned == ["transaction already deassociated from connection"]
            assert logged == [
                "flask_uow: the commit failed part-way and the databases now"
                " disagree. Committed on 'default'; failed on 'other'; not"
                " committed on no other engine. Set 'UOW_TWO_PHASE' to make"
                " commits across engines atomic."
            ]
            partial.append(n)
            break
        assert (logged, warned) == ([], [])
    assert partial
