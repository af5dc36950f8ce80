# mypy: disable-error-code="untyped-decorator"
"""Celery: a task sent from ``on_commit`` (``db.uow.on_commit`` through
flask_uow.compat, ``uow.on_commit`` natively) runs only once the request's
work is committed, and is never sent for a failed request. Eager mode: the
task runs where it is sent.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from celery import Celery

from .conftest import Database
from .extension_apps import drop
from .extension_apps import emails
from .extension_apps import make_setup
from .extension_apps import MODES
from .extension_apps import Setup


@pytest.fixture(params=MODES)
def setup(
    request: pytest.FixtureRequest, db_url: str, tmp_path: pathlib.Path, db: Database
) -> cabc.Iterator[tuple[Setup, list[list[str]]]]:
    celery = Celery("test", set_as_current=False)
    celery.conf.task_always_eager = True
    #: What each run of the task saw in the database, read as a worker would,
    #: through a connection of its own.
    seen: list[list[str]] = []
    s = make_setup(request.param, db_url, tmp_path, "celery")
    uow = s.ext.uow if request.param == "compat" else s.ext

    @celery.task(name=f"welcome-{request.param}-{id(seen)}")
    def welcome(email: str) -> None:
        seen.append(emails(db.engine, s))

    @s.app.post("/signup/<name>")
    def signup(name: str) -> t.Any:
        email = f"{name}@example.com"
        s.session.add(s.User(email=email, name=name))
        uow.on_commit(lambda: welcome.delay(email))
        if name == "fail":
            return "refused", 400
        return "ok"

    yield s, seen
    drop(s)


def test_task_sees_committed_row(
    setup: tuple[Setup, list[list[str]]], db: Database
) -> None:
    s, seen = setup
    assert s.app.test_client().post("/signup/a").status_code == 200
    assert seen == [["a@example.com"]]
    assert emails(db.engine, s) == ["a@example.com"]


def test_failed_request_sends_nothing(
    setup: tuple[Setup, list[list[str]]], db: Database
) -> None:
    s, seen = setup
    assert s.app.test_client().post("/signup/fail").status_code == 400
    assert seen == []
    assert emails(db.engine, s) == []
    with s.app.app_context():
        assert (
            s.session.execute(sa.select(sa.func.count()).select_from(s.User)).scalar()
            == 0
        )
