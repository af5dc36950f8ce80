"""Streamed responses: the unit of work ends exactly once, with the close of
the response the app sends, at teardown when that response is another one,
and when nobody closes it, when it is garbage collected.
"""

from __future__ import annotations

import collections.abc as cabc
import gc
import logging
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import abort
from flask import Flask
from flask import request_finished
from flask import Response
from flask import stream_with_context

from flask_uow import UnitOfWork

from .conftest import check_no_leaks
from .conftest import Database
from .conftest import PoolWatch
from .conftest import watch_pools
from .models import Item

Hook = cabc.Callable[[Response], Response]


@pytest.fixture
def apps(
    uow: UnitOfWork, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[list[tuple[Flask, PoolWatch]]]:
    """Apps built by :func:`app_with_late_hook`, checked for leaks after the test."""
    made: list[tuple[Flask, PoolWatch]] = []
    yield made
    for app, watch in made:
        try:
            check_no_leaks(uow, app, watch)
        finally:
            uow.dispose_engines(app)


def app_with_late_hook(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    hook: Hook | None,
) -> Flask:
    """An app with a pool of 2 connections, a streaming export view and a
    write view; *hook* is registered before ``init_app``, so it runs after
    flask_uow's end-of-request commit.
    """
    app = Flask("late", root_path=str(tmp_path))
    app.config["UOW_ENGINES"] = {
        "default": {
            "url": db_url,
            "poolclass": sa.QueuePool,
            "pool_size": 1,
            "max_overflow": 1,
            "pool_timeout": 1,
        }
    }
    if hook is not None:
        app.after_request(hook)
    uow.init_app(app)
    apps.append((app, watch_pools(uow, app)))

    @app.post("/export/<name>")
    def export(name: str) -> Response:
        uow.session.add(Item(name=name))
        uow.session.flush()

        def generate() -> cabc.Iterator[str]:
            yield from uow.session.scalars(sa.select(Item.name).order_by(Item.name))

        return Response(stream_with_context(generate()))

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        return name

    return app


def checked_out(uow: UnitOfWork, app: Flask) -> int:
    with app.app_context():
        return t.cast(int, uow.engine.pool.checkedout())  # type: ignore[attr-defined]


def open_units(uow: UnitOfWork, app: Flask) -> int:
    return uow._state(app)[1].live


@pytest.mark.parametrize("outcome", ["raises", "replaces"])
def test_later_hook_that_drops_the_stream_does_not_leak(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    db: Database,
    outcome: str,
) -> None:
    """An after_request function running after the commit that uses the
    session and then raises, or returns another response, leaves no unit open
    and no connection checked out: three such requests on a pool of two, then
    a normal request still answers 200.
    """

    def late(response: Response) -> Response:
        if not response.is_streamed:
            return response
        uow.session.execute(sa.select(Item.name))  # Checks out a connection.
        if outcome == "raises":
            raise RuntimeError("late hook failed")
        return Response("replaced", 202)

    app = app_with_late_hook(apps, uow, db_url, tmp_path, late)
    client = app.test_client()
    expected = 500 if outcome == "raises" else 202
    for name in ("a", "b", "c"):
        assert client.post(f"/export/{name}").status_code == expected
        assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert client.post("/items/d").status_code == 200
    assert db.names() == ["a", "b", "c", "d"]  # Committed before the late hook.


def test_later_hook_keeps_a_streamed_replacement_open_until_closed(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    db: Database,
) -> None:
    """When a later hook sends another streamed response, the unit ends with
    that response's close; the body still reads through the view's session.
    """

    def late(response: Response) -> Response:
        return Response(response.response, 200, mimetype="text/csv")

    app = app_with_late_hook(apps, uow, db_url, tmp_path, late)
    response = app.test_client().post("/export/a", buffered=False)
    assert response.mimetype == "text/csv"
    assert b"".join(response.response) == b"a"  # type: ignore[arg-type]
    assert open_units(uow, app) == 1
    response.close()
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert db.names() == ["a"]


def test_stream_that_is_never_read_ends_at_close(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    db: Database,
) -> None:
    """The unit of a streamed response ends when the response is closed,
    without a warning, even when the body was never read.
    """
    app = app_with_late_hook(apps, uow, db_url, tmp_path, None)
    response = app.test_client().post("/export/a", buffered=False)
    assert open_units(uow, app) == 1
    response.close()
    response.close()
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert db.names() == ["a"]


def careless_middleware(app: Flask) -> None:
    """Wrap *app* in a WSGI middleware that buffers the body and never calls
    its close(), as PEP 3333 says it must.
    """
    wsgi_app = app.wsgi_app

    def buffer(environ: t.Any, start_response: t.Any) -> list[bytes]:
        body = wsgi_app(environ, start_response)
        return [b"".join(body)]

    app.wsgi_app = buffer  # type: ignore[method-assign]


def test_stream_that_is_never_closed_is_ended_when_collected(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed response dropped without close() still has its unit rolled
    back and its connection returned once it is garbage collected, with a
    warning naming the cause; the pool serves later requests.
    """
    app = app_with_late_hook(apps, uow, db_url, tmp_path, None)
    careless_middleware(app)

    @app.post("/stream-write/<name>")
    def stream_write(name: str) -> Response:
        uow.session.execute(sa.select(1))

        def generate() -> cabc.Iterator[str]:
            uow.session.add(Item(name=name))
            uow.session.flush()  # Written after the commit: never kept.
            yield name

        return Response(stream_with_context(generate()))

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger=app.logger.name):
        for written, name in (("a", "a"), ("ab", "b"), ("abc", "c")):
            assert client.post(f"/export/{name}").data == written.encode()
            assert client.post(f"/stream-write/late-{name}").data == b"late-" + (
                name.encode()
            )
            gc.collect()
            assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert client.post("/items/d").status_code == 200
    assert db.names() == ["a", "b", "c", "d"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    assert "without being closed" in warnings[0].getMessage()
    assert "close()" in warnings[0].getMessage()


def test_closed_stream_is_not_ended_again_when_collected(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed response that was closed logs no warning when collected."""
    app = app_with_late_hook(apps, uow, db_url, tmp_path, None)
    response = app.test_client().post("/export/a", buffered=False)
    b"".join(response.response)  # type: ignore[arg-type]
    response.close()
    del response
    gc.collect()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)


def test_unweakrefable_body_is_ended_by_its_response(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed body that cannot be weakly referenced (a list iterator) is
    watched through its response: closed, it ends the unit; dropped, the
    safety net does.
    """

    def late(response: Response) -> Response:
        uow.session.execute(sa.select(1))  # A transaction after the commit.
        return response

    app = app_with_late_hook(apps, uow, db_url, tmp_path, late)

    @app.get("/listed")
    def listed() -> Response:
        names = uow.session.scalars(sa.select(Item.name)).all()
        return Response(iter([*names, "end"]))

    response = app.test_client().get("/listed", buffered=False)
    assert open_units(uow, app) == 1
    response.close()
    assert open_units(uow, app) == 0
    careless_middleware(app)
    with caplog.at_level(logging.WARNING, logger=app.logger.name):
        assert app.test_client().get("/listed").data == b"end"
        gc.collect()
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert "without being closed" in caplog.records[-1].getMessage()


def test_unclosed_stream_without_a_transaction_is_ended_quietly(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dropped streamed response whose unit holds no transaction, such as
    the streamed error page of abort(), is ended without a warning.
    """
    app = app_with_late_hook(apps, uow, db_url, tmp_path, None)
    careless_middleware(app)

    @app.get("/missing")
    def missing() -> str:
        uow.session.execute(sa.select(1))
        abort(404)

    assert app.test_client().get("/missing").status_code == 404
    gc.collect()
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_failure_after_the_last_hook_ends_the_unit_with_the_error_page(
    apps: list[tuple[Flask, PoolWatch]],
    uow: UnitOfWork,
    db_url: str,
    tmp_path: pathlib.Path,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request_finished receiver that raises after the streamed response
    was finalized makes Flask send its error page instead (itself streamed):
    the unit ends with the error page's close, not with the dropped stream.
    """
    app = app_with_late_hook(apps, uow, db_url, tmp_path, None)

    def fail(sender: Flask, response: Response, **extra: t.Any) -> None:
        if response.is_streamed and response.status_code == 200:
            raise RuntimeError("receiver failed")

    with request_finished.connected_to(fail, app):
        response = app.test_client().post("/export/a")
    assert response.status_code == 500
    gc.collect()
    assert open_units(uow, app) == 1
    response.close()
    assert (checked_out(uow, app), open_units(uow, app)) == (0, 0)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    assert db.names() == ["a"]  # Committed before the receiver ran.
