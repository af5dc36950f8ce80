"""Telemetry settings (issue 23): checked in init_app, the missing package
named, and off meaning absent (no listener, no call on the request path).

Specification tests, written before the feature: they fail until phase B.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import textwrap
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .models import Item

#: Run in a child process where 'import opentelemetry' fails, as it does
#: when the package is not installed.
WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None
from flask import Flask
from flask_uow import UnitOfWork
app = Flask("no_otel")
app.config["UOW_ENGINES"] = {{"default": "sqlite://"}}
app.config.update({config})
try:
    UnitOfWork().init_app(app)
except RuntimeError as e:
    print("RuntimeError:", e)
else:
    print("ok")
"""


def run_without_otel(config: dict[str, t.Any]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_OTEL.format(config=config))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_spans_without_the_package_fail_in_init_app() -> None:
    """UOW_OPENTELEMETRY on without opentelemetry-api installed raises in
    init_app, naming the setting and the extra to install.
    """
    out = run_without_otel({"UOW_OPENTELEMETRY": True})
    assert out.startswith("RuntimeError:")
    assert "'UOW_OPENTELEMETRY'" in out
    assert "opentelemetry-api" in out
    assert "flask-uow[otel]" in out


def test_comments_need_no_package() -> None:
    """SQL comments alone work without OpenTelemetry installed."""
    assert run_without_otel({"UOW_SQL_COMMENTS": True}) == "ok"


@pytest.mark.parametrize(
    ("key", "value", "error", "words"),
    [
        ("UOW_OPENTELEMETRY", "yes", TypeError, "True or False"),
        ("UOW_SQL_COMMENTS", "everything", ValueError, "'location'"),
        ("UOW_SQL_COMMENTS", 1, TypeError, "'location'"),
    ],
)
def test_bad_values_are_refused(
    make_app: AppFactory, key: str, value: object, error: type[Exception], words: str
) -> None:
    """A setting of the wrong type or value is refused with a sentence that
    names it and what it accepts.
    """
    with pytest.raises(error, match=f"'{key}'") as excinfo:
        make_app(**{key: value})
    assert words in str(excinfo.value)


def all_listeners(uow: UnitOfWork, app: Flask) -> list[t.Any]:
    """Every SQLAlchemy event listener on the app's engines, their pools and
    a unit's session.
    """
    found: list[t.Any] = []
    with app.test_request_context():
        targets: list[t.Any] = [uow.session()]
        for engine in uow.engines.values():
            targets += [engine, engine.pool]
        for target in targets:
            dispatch = target.dispatch
            for name in dispatch._event_names:
                found.extend(getattr(dispatch, name))
    return found


def calls_of(app: Flask, path: str) -> pstats.Stats:
    client = app.test_client()
    client.get(path)  # Warm up: first-use work is not per request.
    profile = cProfile.Profile()
    profile.enable()
    client.get(path)
    profile.disable()
    return pstats.Stats(profile)


def telemetry_functions(stats: pstats.Stats) -> list[str]:
    return [
        f"{file}:{function}"
        for (file, _, function) in stats.stats  # type: ignore[attr-defined]
        if "/opentelemetry/" in file
        or os.path.basename(file) in ("_telemetry.py", "_telemetry_spans.py")
        or os.path.basename(file) == "_sqlcomment.py"
    ]


def test_off_means_no_listener_and_no_call(
    make_app: AppFactory, uow: UnitOfWork, backend: str
) -> None:
    """With both settings off, telemetry attaches no listener and no function
    of it runs during a request; turned on, both show, so the checks can
    see them.
    """

    def build(**config: t.Any) -> Flask:
        app = make_app(**config)

        @app.get("/one")
        def one() -> str:
            return str(uow.session.scalar(sa.select(sa.func.count(Item.id))))

        return app

    absent = build()
    off = build(UOW_OPENTELEMETRY=False, UOW_SQL_COMMENTS=False)
    on = build(UOW_OPENTELEMETRY=True, UOW_SQL_COMMENTS="location")
    assert len(all_listeners(uow, off)) == len(all_listeners(uow, absent))
    assert len(all_listeners(uow, on)) > len(all_listeners(uow, off))
    assert telemetry_functions(calls_of(off, "/one")) == []
    assert telemetry_functions(calls_of(on, "/one")) != []
    off_calls = calls_of(off, "/one").total_calls  # type: ignore[attr-defined]
    absent_calls = calls_of(absent, "/one").total_calls  # type: ignore[attr-defined]
    assert off_calls == absent_calls
