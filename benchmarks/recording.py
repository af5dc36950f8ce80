"""What recording statements costs per request, beside recording off and
beside Flask-SQLAlchemy's ``SQLALCHEMY_RECORD_QUERIES``.
"""

from __future__ import annotations

import dataclasses

from flask import Flask

from .apps import BUILDERS
from .apps import create_tables
from .requests import request_runner
from .requests import time_runners

KINDS = {"read one row by key": "/one/500", "read 20 rows": "/twenty"}
VARIANTS = ("uow", "uow-recording", "flask-sqlalchemy", "flask-sqlalchemy-recording")


@dataclasses.dataclass
class RecordingResult:
    kind: str
    #: Median time per request in microseconds, by variant.
    median_us: dict[str, float]


def cursor_listeners(app: Flask) -> int:
    """How many cursor listeners the app's flask_uow engine has."""
    with app.app_context():
        engine = app.extensions["uow"].engine
    dispatch = engine.dispatch
    return len(dispatch.before_cursor_execute) + len(dispatch.after_cursor_execute)


def run(url: str, rounds: int, per_round: int) -> tuple[list[RecordingResult], int]:
    """Time the read requests with and without recording. Returns the
    results and how many cursor listeners flask_uow attached with recording
    off (it must be none).
    """
    create_tables(url)
    built = {name: BUILDERS[name](url) for name in VARIANTS}
    try:
        listeners = cursor_listeners(built["uow"][0])
        results = []
        for kind, path in KINDS.items():
            runners = {
                name: request_runner(app, "GET", path)
                for name, (app, _) in built.items()
            }
            results.append(
                RecordingResult(kind, time_runners(runners, rounds, per_round))
            )
        return results, listeners
    finally:
        for _, dispose in built.values():
            dispose()
