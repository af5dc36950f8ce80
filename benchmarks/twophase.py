"""What a commit across two PostgreSQL databases costs with two-phase commit
(``UOW_TWO_PHASE``) and without, on a server of its own whose
``max_prepared_transactions`` is set.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import pathlib
import typing as t
import warnings

import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .requests import request_runner
from .requests import time_runners

TABLES = {
    key: sa.Table(
        "entries",
        sa.MetaData(info={"bind_key": key} if key != "default" else {}),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Integer, nullable=False),
    )
    for key in ("default", "other")
}


@dataclasses.dataclass
class TwoPhaseResult:
    #: Median microseconds per request, by variant.
    median_us: dict[str, float]
    #: Rows in each database, and prepared transactions left, after the run.
    rows: dict[str, int]
    prepared_left: int


@contextlib.contextmanager
def server(folder: pathlib.Path) -> cabc.Iterator[sa.URL]:
    """A server with prepared transactions enabled (the option needs a
    restart), and two databases on it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        pg = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
        url = sa.make_url(
            pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
        )
        _admin(url, "ALTER SYSTEM SET max_prepared_transactions = 20")
        pg.cleanup()
        pg = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        for name in ("bench_a", "bench_b"):
            _admin(url, f"CREATE DATABASE {name}")
        yield url
    finally:
        pg.cleanup()


def _admin(url: sa.URL, sql: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def _app(urls: dict[str, str], two_phase: bool) -> tuple[Flask, UnitOfWork]:
    app = Flask(f"twophase_{two_phase}")
    app.config["UOW_ENGINES"] = urls
    app.config["UOW_TWO_PHASE"] = two_phase
    uow = UnitOfWork(app)

    @app.post("/transfer")
    def transfer() -> str:
        uow.session.execute(sa.insert(TABLES["default"]).values(amount=-1))
        uow.session.execute(sa.insert(TABLES["other"]).values(amount=1))
        return "ok"

    return app, uow


def run(folder: pathlib.Path, rounds: int, per_round: int) -> TwoPhaseResult:
    """Time a request that inserts one row in each of two databases, with
    and without two-phase commit, interleaved round by round.
    """
    with server(folder) as url:
        urls = {
            "default": url.set(database="bench_a").render_as_string(False),
            "other": url.set(database="bench_b").render_as_string(False),
        }
        for key, table in TABLES.items():
            engine = sa.create_engine(urls[key], poolclass=sa.NullPool)
            table.metadata.create_all(engine)
            engine.dispose()
        built = {
            "without two-phase": _app(urls, False),
            "two-phase": _app(urls, True),
        }
        calls: dict[str, t.Callable[[], None]] = {
            name: request_runner(app, "POST", "/transfer")
            for name, (app, _) in built.items()
        }
        medians = time_runners(calls, rounds, per_round)
        for app, uow in built.values():
            uow.dispose_engines(app)
        rows = {}
        prepared_left = 0
        for key, database_url in urls.items():
            engine = sa.create_engine(database_url, poolclass=sa.NullPool)
            with engine.connect() as conn:
                rows[key] = conn.execute(
                    sa.text("SELECT count(*) FROM entries")
                ).scalar_one()
                prepared_left += conn.execute(
                    sa.text("SELECT count(*) FROM pg_prepared_xacts")
                ).scalar_one()
            engine.dispose()
    return TwoPhaseResult(medians, rows, prepared_left)
