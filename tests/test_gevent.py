"""Green threads (issue 21, item 4): the example app under gunicorn's gevent
worker with psycopg 3 on PostgreSQL, and the warning ``init_app`` gives when
gevent's monkey patching is active with a SQLite engine.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from benchmarks import load
from example_app.models import Base

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_example_app_under_gevent_workers(postgresql_database: str) -> None:
    """200 concurrent transfers on 2 gevent workers (psycopg 3): every one
    answered 201 and in the balances, the audit trail and the notifications
    exactly once (units are never shared between greenlets), and no
    connection is left inside a transaction.
    """
    assert postgresql_database.startswith("postgresql+psycopg://")
    try:
        result = load.run(
            postgresql_database,
            workers=2,
            clients=8,
            requests=25,
            accounts=5,
            worker_class="gevent",
        )
    finally:
        engine = sa.create_engine(postgresql_database, poolclass=sa.NullPool)
        Base.metadata.drop_all(engine)
        engine.dispose()
    assert dict(result.statuses) == {201: 200}, result.log
    assert result.problems == []
    assert result.in_transaction_after == 0


SCRIPT = """\
import logging, sys
if sys.argv[1] == "patched":
    from gevent import monkey
    monkey.patch_all()
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from flask import Flask
from flask_uow import UnitOfWork
app = Flask("gevent_check")
app.config["UOW_ENGINES"] = {"default": sys.argv[2]}
UnitOfWork().init_app(app)
print("initialized")
"""


def run_script(mode: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), mode, url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mode", ["patched", "plain"])
def test_sqlite_under_gevent_is_warned_about(tmp_path: pathlib.Path, mode: str) -> None:
    """With gevent's monkey patching active, ``init_app`` on a SQLite engine
    logs a warning that names gevent and SQLite; without it, nothing.
    """
    result = run_script(mode, f"sqlite:///{tmp_path / 'app.db'}")
    assert result.returncode == 0, result.stderr
    assert "initialized" in result.stdout
    warnings = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("WARNING") and "gevent" in line and "SQLite" in line
    ]
    if mode == "patched":
        assert len(warnings) == 1, result.stderr
    else:
        assert warnings == [], result.stderr


def test_postgresql_under_gevent_is_not_warned_about(postgresql_database: str) -> None:
    """The warning is about SQLite only: psycopg 3 cooperates with gevent."""
    result = run_script("patched", postgresql_database)
    assert result.returncode == 0, result.stderr
    assert "gevent" not in result.stderr, result.stderr
