"""The Flask behaviour flask_uow relies on; these fail loudly if Flask changes."""

from __future__ import annotations

import pathlib
import typing as t

from flask import Flask
from flask import request
from flask.globals import _cv_request


def make_app() -> Flask:
    return Flask("contract", root_path=str(pathlib.Path.cwd()))


def test_request_context_variable_names_the_app_and_request() -> None:
    """flask_uow finds the app of the current request through _cv_request."""
    app = make_app()
    seen: list[bool] = []

    @app.get("/")
    def index() -> str:
        ctx = _cv_request.get(None)
        seen.append(ctx is not None and ctx.app is app)
        seen.append(ctx is not None and ctx.request is request._get_current_object())  # type: ignore[attr-defined]
        return ""

    app.test_client().get("/")
    assert seen == [True, True]
    assert _cv_request.get(None) is None


def test_handle_user_exception_sees_handled_exceptions() -> None:
    """Every exception from a view reaches app.handle_user_exception, even one
    an errorhandler handles; flask_uow notices failures there.
    """
    app = make_app()
    seen: list[Exception] = []
    original = app.handle_user_exception

    def spy(e: Exception) -> t.Any:
        seen.append(e)
        return original(e)

    app.handle_user_exception = spy  # type: ignore[method-assign]

    @app.errorhandler(ValueError)
    def handled(e: ValueError) -> tuple[str, int]:
        return "handled", 302

    @app.get("/")
    def index() -> str:
        raise ValueError("x")

    assert app.test_client().get("/").status_code == 302
    assert [type(e) for e in seen] == [ValueError]
