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
    """120 concurrent transfers on 2 gevent workers (psycopg 3): every one
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
            requests=15,
            accounts=5,
            worker_class="gevent",
            # Every greenlet of a worker runs at once: on 5 accounts the
            # SERIALIZABLE conflicts outlast the example app's 10 retries
            # now and then, answered 503 (busy), not lost.
            retries=40,
        )
    finally:
        engine = sa.create_engine(postgresql_database, poolclass=sa.NullPool)
        Base.metadata.drop_all(engine)
        engine.dispose()
    assert dict(result.statuses) == {201: 120}, result.log
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


CONCURRENCY = """\
import sys, time
from gevent import monkey
monkey.patch_all()
import gevent
import sqlalchemy as sa
driver, url = sys.argv[1], sys.argv[2]
if driver == "psycopg2-green":
    import psycogreen.gevent
    psycogreen.gevent.patch_psycopg()
engine = sa.create_engine(
    sa.make_url(url).set(drivername="postgresql+" + driver.split("-")[0]),
    pool_size=4,
)
def sleep():
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(0.4)")
with engine.connect():  # Connect before timing.
    pass
start = time.monotonic()
gevent.joinall([gevent.spawn(sleep) for _ in range(3)], raise_error=True)
print(round(time.monotonic() - start, 2))
"""


@pytest.mark.parametrize(
    ("driver", "concurrent"),
    [("psycopg", True), ("psycopg2", False), ("psycopg2-green", True)],
)
def test_which_drivers_wait_concurrently_under_gevent(
    postgresql_database: str, driver: str, concurrent: bool
) -> None:
    """Three greenlets each wait 0.4 s on the database: psycopg 3 and
    psycopg2 made green with psycogreen wait together (well under 1.2 s);
    plain psycopg2 blocks the worker, one query at a time (1.2 s or more).
    """
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENCY, driver, postgresql_database],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    elapsed = float(result.stdout.strip())
    if concurrent:
        assert elapsed < 1.0, elapsed
    else:
        assert elapsed >= 1.2, elapsed


SQLITE_LOCK = """\
import sqlite3, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
path = sys.argv[1]
sqlite3.connect(path).execute("CREATE TABLE t (x int)")
ticks = []
def holder():
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    gevent.sleep(0.3)  # Would let the waiter in after 0.3 s.
    conn.execute("COMMIT")
def waiter():
    gevent.sleep(0.05)
    conn = sqlite3.connect(path, isolation_level=None, timeout=1.5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        return "got the lock"
    except sqlite3.OperationalError as e:
        return str(e)
def ticker():
    for _ in range(40):
        ticks.append(time.monotonic())
        gevent.sleep(0.05)
jobs = [gevent.spawn(holder), gevent.spawn(waiter), gevent.spawn(ticker)]
gevent.joinall(jobs)
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print(jobs[1].value, "|", round(max(gaps), 2))
"""


def test_sqlite_blocks_every_greenlet(tmp_path: pathlib.Path) -> None:
    """Under gevent, a connection waiting for SQLite's write lock waits in C:
    no other greenlet runs meanwhile (not even the one that holds the lock and
    would release it after 0.3 s), so the wait ends in 'database is locked'.
    """
    result = subprocess.run(
        [sys.executable, "-c", SQLITE_LOCK, str(tmp_path / "lock.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcome, gap = result.stdout.strip().split(" | ")
    assert outcome == "database is locked"
    assert float(gap) >= 1.0  # The ticker stood still during the wait.
