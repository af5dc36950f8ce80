"""The models a UnitOfWork is given: metadata by bind key, create_all and
drop_all, the shell, and the configuration a Flask-SQLAlchemy app brings.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database


class Base(orm.DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    text: orm.Mapped[str] = orm.mapped_column(sa.String(50))


class Archived(Base):
    """A model of the default base whose table goes to the 'audit' engine."""

    __tablename__ = "archived"
    __table_args__ = {"info": {"bind_key": "audit"}}
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)


audit_metadata = sa.MetaData(info={"bind_key": "audit"})
audit_log = sa.Table(
    "audit_log", audit_metadata, sa.Column("id", sa.Integer, primary_key=True)
)


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def audit(tmp_path: pathlib.Path) -> str:
    """The URL of a second database, for the 'audit' bind key."""
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def models_app(
    make_app: AppFactory, db_url: str, audit: str
) -> cabc.Iterator[tuple[Flask, UnitOfWork]]:
    """An app whose UnitOfWork knows Base and the audit metadata."""
    uow = UnitOfWork(metadata=[Base, audit_metadata])
    app = make_app(init=False, UOW_ENGINES={"default": db_url, "audit": audit})
    uow.init_app(app)
    yield app, uow
    with app.app_context():
        uow.drop_all()
    uow.dispose_engines(app)


def test_create_all_and_drop_all_use_each_tables_engine(
    models_app: tuple[Flask, UnitOfWork], db: Database, audit: str
) -> None:
    """Each table is created on, and dropped from, the engine of its bind key,
    be it the table's own or its metadata's.
    """
    app, uow = models_app
    before = tables(db.url)
    with app.app_context():
        uow.create_all()
        uow.create_all()  # Existing tables are left alone.
    assert tables(db.url) - before == {"notes"}
    assert tables(audit) == {"archived", "audit_log"}
    with app.app_context():
        uow.drop_all()
    assert tables(db.url) == before
    assert tables(audit) == set()


def test_metadata_by_bind_key(models_app: tuple[Flask, UnitOfWork]) -> None:
    """metadata is the default engine's; metadatas splits tables by bind key,
    keeping a MetaData whose tables all go to one engine as it is.
    """
    app, uow = models_app
    assert set(uow.metadata.tables) == {"notes"}
    assert set(uow.metadatas) == {None, "audit"}
    assert set(uow.metadatas["audit"].tables) == {"archived", "audit_log"}
    assert uow.bind_names() == ["audit"]
    alone = UnitOfWork(metadata=audit_metadata)
    assert alone.metadatas == {"audit": audit_metadata}
    assert UnitOfWork(metadata=sa.MetaData()).metadata is not None
    with app.app_context():
        assert uow.get_engine() is uow.engine
        assert uow.get_engine("default") is uow.engine
        assert uow.get_engine("audit") is uow.engines["audit"]


def test_the_same_metadata_is_kept() -> None:
    """A base class or MetaData whose tables all go to one engine is used as
    it is, even beside a MetaData whose only table has a bind key.
    """

    class Plain(orm.DeclarativeBase):
        pass

    assert UnitOfWork(metadata=Plain).metadata is Plain.metadata
    logs = sa.Table(
        "logs", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    logs.info["bind_key"] = "audit"
    both = UnitOfWork(metadata=[Plain, logs.metadata])
    assert both.metadata is Plain.metadata
    assert both.metadatas["audit"] is logs.metadata


@pytest.mark.parametrize("backend", ["sqlite"])
def test_missing_engine_or_metadata_is_explained(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A bind key without an engine, or no metadata for the default engine,
    raises RuntimeError naming what to add.
    """
    with pytest.raises(RuntimeError, match=r"no metadata for the default engine"):
        uow.metadata  # noqa: B018
    assert uow.metadatas == {}
    only_audit = UnitOfWork(metadata=audit_metadata)
    app = make_app(init=False)
    only_audit.init_app(app)
    try:
        with app.app_context():
            with pytest.raises(RuntimeError, match=r"UOW_ENGINES\['audit'\]"):
                only_audit.create_all()
            with pytest.raises(RuntimeError, match=r"no engine named 'audit'"):
                only_audit.get_engine("audit")
    finally:
        only_audit.dispose_engines(app)


@pytest.mark.parametrize("value", ["Base", 42, [sa.MetaData(), object]])
def test_metadata_argument_must_be_a_base_or_metadata(value: t.Any) -> None:
    """Anything but declarative bases and MetaData is refused with TypeError."""
    with pytest.raises(TypeError, match=r"neither a declarative base class nor"):
        UnitOfWork(metadata=value)


def test_shell_offers_uow_and_the_models(
    models_app: tuple[Flask, UnitOfWork],
) -> None:
    """flask shell gets 'uow' and the model classes of the declarative bases."""
    app, uow = models_app
    context = app.make_shell_context()
    assert context["uow"] is uow
    assert context["Note"] is Note
    assert context["Archived"] is Archived
    assert "audit_log" not in context


@pytest.mark.parametrize("backend", ["sqlite"])
def test_shell_without_models_offers_uow(flask_app: Flask, uow: UnitOfWork) -> None:
    """Without metadata, the shell still gets 'uow'."""
    assert flask_app.make_shell_context()["uow"] is uow


@pytest.mark.parametrize("key", ["SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_BINDS"])
def test_flask_sqlalchemy_config_names_the_key_to_set(
    key: str, tmp_path: pathlib.Path
) -> None:
    """An app configured for Flask-SQLAlchemy only is told to set UOW_ENGINES,
    without the URL (it may hold a password) being repeated.
    """
    app = Flask("ported", root_path=str(tmp_path))
    url = "postgresql+psycopg://app:s3cret@db/app"
    app.config[key] = url if key.endswith("URI") else {"audit": url}
    with pytest.raises(RuntimeError) as raised:
        UnitOfWork(app)
    message = str(raised.value)
    assert f"'UOW_ENGINES' is not set, but {key!r} is" in message
    assert "app.config['UOW_ENGINES'] = {'default':" in message
    assert "s3cret" not in message and "db/app" not in message
    assert "uow" not in app.extensions


def test_without_any_database_key_uow_engines_is_asked_for(
    tmp_path: pathlib.Path,
) -> None:
    """An app with neither UOW_ENGINES nor Flask-SQLAlchemy's keys is told to
    set UOW_ENGINES.
    """
    app = Flask("empty", root_path=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"^'UOW_ENGINES' is not set\. Set it"):
        UnitOfWork(app)
