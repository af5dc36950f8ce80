"""Signals re-emit the session's life, with change sets that respect savepoints."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import pathlib
import sys
import types
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from blinker import NamedSignal
from flask import Flask

import flask_uow
from flask_uow import after_begin
from flask_uow import after_commit
from flask_uow import after_rollback
from flask_uow import before_commit
from flask_uow import before_retry
from flask_uow import Change
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item
from .models import metadata
from .models import tags


class Recorder:
    """Receives one signal for one app and keeps every payload."""

    def __init__(self) -> None:
        self.calls: list[dict[str, t.Any]] = []

    def __call__(self, sender: Flask, **payload: t.Any) -> None:
        self.calls.append({"sender": sender, **payload})

    @property
    def changes(self) -> list[list[Change]]:
        return [call["changes"] for call in self.calls]


@contextlib.contextmanager
def receiving(app: Flask, *signals: NamedSignal) -> cabc.Iterator[list[Recorder]]:
    """Connect a recorder to each signal for *app*; disconnect afterwards."""
    recorders = [Recorder() for _ in signals]
    with contextlib.ExitStack() as stack:
        for signal, recorder in zip(signals, recorders, strict=True):
            stack.enter_context(signal.connected_to(recorder, app))
        yield recorders


def summary(changes: list[Change]) -> list[tuple[str, str, t.Any]]:
    return [(c.operation, c.table, c.identity) for c in changes]


def test_signals_are_exported_from_both_modules() -> None:
    """flask_uow re-exports the signals of flask_uow.signals."""
    assert flask_uow.signals.after_commit is after_commit
    assert after_commit.name == "flask-uow.after-commit"


def test_changes_are_net_per_object_across_flushes(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """Each object appears once with its net effect over all flushes."""
    with flask_app.app_context():
        with uow.transaction() as session:
            items = [Item(name="kept"), Item(name="old"), Item(name="x")]
            session.add_all(items)
            session.flush()
            kept_id, renamed_id, doomed_id = (i.id for i in items)
    with receiving(flask_app, after_commit) as [received]:
        with flask_app.app_context(), uow.transaction() as session:
            new = Item(name="new")
            session.add(new)
            session.flush()
            new.name = "newer"  # insert then update: one insert
            ghost = Item(name="ghost")
            session.add(ghost)
            session.flush()
            session.delete(ghost)  # insert then delete: nothing
            item = session.get_one(Item, renamed_id)
            item.name = "renamed"
            session.flush()
            item.name = "renamed again"  # two updates: one, first old, last new
            gone = session.get_one(Item, doomed_id)
            gone.name = "changed"
            session.flush()
            session.delete(gone)  # update then delete: one delete
            unchanged = session.get_one(Item, kept_id)
            unchanged.name = "temporary"
            session.flush()
            unchanged.name = "kept"  # changed back: no change
            ids = new.id, renamed_id, doomed_id
    [changes] = received.changes
    assert summary(changes) == [
        ("insert", "items", (ids[0],)),
        ("update", "items", (ids[1],)),
        ("delete", "items", (ids[2],)),
    ]
    assert changes[0].instance is new
    assert changes[0].attributes == {}
    assert changes[1].attributes == {"name": ("old", "renamed again")}


def test_savepoint_changes_are_reported_once_and_only_if_kept(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """A rolled back savepoint's changes vanish; a released one fires no
    after_commit of its own.
    """
    outer, released = Item(name="outer"), Item(name="released")
    with receiving(flask_app, after_commit) as [received]:
        with flask_app.app_context(), uow.transaction() as session:
            session.add(outer)
            with uow.transaction():
                session.add(released)
            assert received.calls == []
            with pytest.raises(ValueError), uow.transaction():
                session.add(Item(name="undone"))
                session.flush()
                raise ValueError()
    [changes] = received.changes
    assert [c.instance for c in changes] == [outer, released]


def test_core_statements_are_reported(flask_app: Flask, uow: UnitOfWork) -> None:
    """Core INSERT, UPDATE and DELETE run through the session are changes."""
    with receiving(flask_app, after_commit) as [received]:
        with flask_app.app_context(), uow.transaction() as session:
            session.execute(sa.insert(tags).values(id=100, name="one"))
            session.execute(sa.insert(tags), [{"name": "two"}, {"name": "three"}])
            session.execute(sa.update(tags).where(tags.c.id == 100).values(name="1"))
            session.execute(sa.delete(tags).where(tags.c.name == "three"))
            session.execute(sa.update(Item).values(name="bulk"))
            session.execute(sa.insert(Item), [{"name": "orm1"}, {"name": "orm2"}])
            session.execute(sa.update(tags).values(name=None).where(tags.c.id == 0))
    [changes] = received.changes
    assert [(c.operation, c.table, c.identity, c.attributes) for c in changes] == [
        ("insert", "tags", (100,), {"id": (None, 100), "name": (None, "one")}),
        ("insert", "tags", None, {"name": (None, "two")}),
        ("insert", "tags", None, {"name": (None, "three")}),
        ("update", "tags", None, {"name": (None, "1")}),
        ("delete", "tags", None, {}),
        ("update", "items", None, {"name": (None, "bulk")}),
        ("insert", "items", None, {"name": (None, "orm1")}),
        ("insert", "items", None, {"name": (None, "orm2")}),
        ("update", "tags", None, {"name": (None, None)}),
    ]
    assert all(c.instance is None for c in changes)


def test_failed_core_statement_is_not_reported(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """A statement that raised wrote nothing and is not a change."""
    with receiving(flask_app, after_commit) as [received]:
        with flask_app.app_context(), uow.transaction() as session:
            session.execute(sa.insert(tags).values(name="a"))
            with pytest.raises(sa_exc.IntegrityError), uow.transaction():
                session.execute(sa.insert(tags).values(name=None))
    assert [summary(c) for c in received.changes] == [[("insert", "tags", None)]]


def test_before_commit_receiver_adds_audit_rows_atomically(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Rows added by a before_commit receiver commit with the request's work,
    and after_commit reports them too.
    """

    def audit(
        sender: Flask, *, session: orm.Session, changes: list[Change], **extra: t.Any
    ) -> None:
        for change in changes:
            if change.table == "items":
                session.execute(
                    sa.insert(tags).values(name=f"audit:{change.operation}")
                )

    @flask_app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        return "ok"

    with before_commit.connected_to(audit, flask_app):
        with receiving(flask_app, after_commit) as [received]:
            assert flask_app.test_client().post("/items/a").status_code == 200
    assert db.names() == ["a"]
    assert db.names("tags") == ["audit:insert"]
    assert sorted(c.table for c in received.changes[0]) == ["items", "tags"]


def test_before_commit_receiver_that_raises_aborts_the_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """The receiver's exception rolls back and reaches the error handlers."""

    class Forbidden(Exception):
        pass

    def veto(sender: Flask, **extra: t.Any) -> None:
        raise Forbidden()

    @flask_app.errorhandler(Forbidden)
    def forbidden(e: Forbidden) -> tuple[str, int]:
        return "forbidden", 403

    @flask_app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        return "ok"

    with before_commit.connected_to(veto, flask_app):
        with receiving(flask_app, after_commit, after_rollback) as [committed, rolled]:
            response = flask_app.test_client().post("/items/a")
    assert (response.status_code, response.data) == (403, b"forbidden")
    assert db.names() == []
    assert committed.calls == []
    assert len(rolled.calls) == 1


def test_after_commit_receiver_that_raises_is_logged(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The commit stands, the response is unchanged, other receivers run."""

    def broken(sender: Flask, **extra: t.Any) -> None:
        raise RuntimeError("cache server down")

    @flask_app.post("/items/<name>")
    def add(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return "created", 201

    with after_commit.connected_to(broken, flask_app):
        with receiving(flask_app, after_commit) as [received]:
            response = flask_app.test_client().post("/items/a")
    assert (response.status_code, response.data) == (201, b"created")
    assert db.names() == ["a"]
    assert len(received.calls) == 1
    assert "a receiver of the 'flask-uow.after-commit' signal failed" in caplog.text


def test_after_commit_receiver_may_use_the_session(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """after_commit is sent once the commit has returned, so a receiver can
    open a transaction of its own.
    """

    def follow_up(sender: Flask, **extra: t.Any) -> None:
        with uow.transaction() as session:
            session.execute(sa.insert(tags).values(name="follow-up"))

    with after_commit.connected_to(follow_up, flask_app):
        with flask_app.app_context(), uow.transaction() as session:
            session.add(Item(name="a"))
    assert db.names("tags") == ["follow-up"]


def test_after_begin_and_after_rollback(
    make_app: AppFactory, uow: UnitOfWork, db: Database, tmp_path: pathlib.Path
) -> None:
    """after_begin fires once per connection per transaction; after_rollback
    fires for the outermost rollback only, and not when nothing began.
    """
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other_table = sa.Table(
        "other", sa.MetaData(), sa.Column("x", sa.Integer), info={"bind_key": "other"}
    )
    other_table.create(other.engine)
    app = make_app(UOW_ENGINES={"default": db.url, "other": other.url})
    with receiving(app, after_begin, after_rollback) as [begun, rolled]:
        with app.app_context():
            session = uow.session()
            session.rollback()  # Nothing began: no signal.
            session.add(Item(name="never flushed"))
            session.rollback()  # A transaction, but no database one: no signal.
            session.execute(sa.select(Item)).all()
            session.execute(sa.select(Item)).all()
            session.execute(sa.select(other_table)).all()
            with uow.transaction():  # Commits the reads first.
                with pytest.raises(ValueError), uow.transaction():
                    session.execute(sa.select(Item)).all()
                    raise ValueError()
                session.execute(sa.select(Item)).all()
                uow.mark_rollback_only()
    # On SQLite the connection may come from a copy of the engine that sets
    # how transactions begin; the copy shares the engine's pool.
    assert [call["connection"].engine.pool for call in begun.calls] == [
        uow_engine.pool
        for uow_engine in [
            db_engine(app, uow),
            db_engine(app, uow, "other"),
            db_engine(app, uow),
        ]
    ]
    assert [call["session"] for call in rolled.calls] == [session]
    other.engine.dispose()


def db_engine(app: Flask, uow: UnitOfWork, name: str = "default") -> sa.Engine:
    with app.app_context():
        return uow.engines[name]


def test_before_retry_payload(flask_app: Flask, uow: UnitOfWork) -> None:
    """before_retry carries the session, the exception and the attempt."""
    uow.retry_classifier(lambda exc: isinstance(exc, KeyError))
    runs: list[int] = []

    @uow.transactional(retries=2)
    def work() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError(len(runs))

    with receiving(flask_app, before_retry) as [received]:
        with flask_app.app_context():
            work()
            session = uow.session()
    assert [(c["attempt"], c["exception"].args) for c in received.calls] == [
        (1, (1,)),
        (2, (2,)),
    ]
    assert all(c["session"] is session for c in received.calls)


def test_signals_fire_outside_requests(flask_app: Flask, uow: UnitOfWork) -> None:
    """A CLI command's transaction sends signals with the app as sender."""

    @flask_app.cli.command("seed")
    def seed() -> None:
        with uow.transaction() as session:
            session.add(Item(name="seeded"))

    with receiving(flask_app, before_commit, after_commit) as recorders:
        result = flask_app.test_cli_runner().invoke(seed)
    assert result.exit_code == 0
    for recorder in recorders:
        [call] = recorder.calls
        assert call["sender"] is flask_app
        assert summary(call["changes"])[0][:2] == ("insert", "items")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_two_apps_get_only_their_own_signals(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """Receivers connected for one app never hear the other app's commits."""
    apps = []
    for name in ("one", "two"):
        url = f"sqlite:///{tmp_path / name}.db"
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        metadata.create_all(engine)
        engine.dispose()
        apps.append(make_app(UOW_ENGINES={"default": url}))
    one, two = apps
    with (
        receiving(one, after_commit) as [heard_one],
        receiving(two, after_commit) as [heard_two],
    ):
        with one.app_context(), uow.transaction() as session:
            session.add(Item(name="one"))
        with two.app_context(), uow.transaction() as session:
            session.add(Item(name="two"))
            session.add(Item(name="three"))
    assert [len(c) for c in heard_one.changes] == [1]
    assert [len(c) for c in heard_two.changes] == [2]


def count_calls(module_file: str) -> tuple[list[str], t.Callable[..., t.Any]]:
    calls: list[str] = []

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == module_file:
            calls.append(frame.f_code.co_name)

    return calls, profile


@pytest.mark.parametrize("receiver", [False, True])
def test_nothing_is_collected_without_receivers(
    flask_app: Flask, uow: UnitOfWork, receiver: bool
) -> None:
    """With no receiver, flushes and statements do no change-set work at all;
    with one, every object is recorded.
    """
    import flask_uow._changes

    assert not after_commit.has_receivers_for(flask_app)
    assert not before_commit.has_receivers_for(flask_app)
    calls, profile = count_calls(flask_uow._changes.__file__)

    @flask_app.post("/")
    def add() -> str:
        uow.session.add_all([Item(name=f"n{i}") for i in range(10)])
        uow.session.flush()
        uow.session.execute(sa.insert(tags).values(name="t"))
        return "ok"

    client = flask_app.test_client()
    with contextlib.ExitStack() as stack:
        if receiver:
            stack.enter_context(receiving(flask_app, after_commit))
        sys.setprofile(profile)
        try:
            assert client.post("/").status_code == 200
        finally:
            sys.setprofile(None)
    if receiver:
        assert calls.count("record") == 11
    else:
        assert calls == []
