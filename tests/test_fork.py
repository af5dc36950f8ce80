"""Forks are safe without the user's help (issue 21, item 3): a process
forked after the app used its engines (``os.fork``, multiprocessing,
``gunicorn --preload``) never uses a connection of the parent's pool, and
does not close the parent's connections either.

Which connection served a statement is told by PostgreSQL's backend pid on
direct connections, and by the client socket's local address through a
pooler.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import contextlib
import http.client
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import typing as t
import warnings

import pytest
import sqlalchemy as sa
from flask import Flask

from benchmarks.e2e import _free_port
from benchmarks.e2e import _wait_until_up
from benchmarks.load import serve
from flask_uow import UnitOfWork

from .deploying import AppFactory
from .pgbouncer import Pooled
from .preload_app import metadata as preload_metadata

ROOT = pathlib.Path(__file__).resolve().parent.parent


def backend_pid(session: t.Any) -> int:
    return int(session.scalar(sa.text("SELECT pg_backend_pid()")))


def in_child(fn: cabc.Callable[[], t.Any]) -> t.Any:
    """Run *fn* in a child made with ``os.fork`` and return its result (as
    JSON); the child leaves with ``os._exit``, running no clean-up of the
    parent's.
    """
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - measured in the child, not reported
        status = 0
        try:
            os.close(read)
            data = json.dumps({"value": fn()})
        except BaseException as e:
            data = json.dumps({"error": f"{type(e).__name__}: {e}"})
        try:
            os.write(write, data.encode())
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        received = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(received)
    assert "error" not in result, result["error"]
    return result["value"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_os_fork_child_opens_its_own_connection(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """A child forked after the parent's unit used a pooled connection runs
    its unit on a connection of its own, and the parent's connection still
    works after the child exits.
    """

    def pid() -> int:
        with flask_app.app_context(), uow.transaction() as session:
            return backend_pid(session)

    parent = pid()
    child = in_child(pid)
    assert child != parent, "the child used the parent's pooled connection"
    assert pid() == parent, "the parent's pooled connection was closed"


def _requests_in_child(app: Flask, queue: t.Any) -> None:  # pragma: no cover
    client = app.test_client()
    queue.put([client.get("/pid").json, client.post("/pid").json])


def test_multiprocessing_child_with_replicas(
    make_deployed_app: AppFactory, postgresql_database: str
) -> None:
    """In a multiprocessing child (fork start method), both the primary
    engine and its replica engine open new connections; the parent's stay
    usable.
    """
    app = make_deployed_app(
        {"default": {"url": postgresql_database, "replicas": [postgresql_database]}}
    )
    uow: UnitOfWork = app.extensions["uow"]

    @app.route("/pid", methods=["GET", "POST"])
    def pid() -> dict[str, t.Any]:
        engine = uow.session.get_bind()
        role = "primary" if engine is uow.engines["default"] else "replica"
        return {"role": role, "pid": backend_pid(uow.session)}

    client = app.test_client()
    parent = [client.get("/pid").json, client.post("/pid").json]
    assert [answer["role"] for answer in parent] == ["replica", "primary"]  # type: ignore[index]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        process = context.Process(target=_requests_in_child, args=(app, queue))
        process.start()
    child = queue.get(timeout=30)
    process.join(timeout=30)
    assert process.exitcode == 0
    assert [answer["role"] for answer in child] == ["replica", "primary"]
    shared = {a["pid"] for a in parent} & {a["pid"] for a in child}  # type: ignore[index]
    assert not shared, "the child used connections of the parent's pools"
    assert [client.get("/pid").json, client.post("/pid").json] == parent


def _post_many(port: int, clients: int, requests: int) -> collections.Counter[int]:
    """Send *requests* POSTs from each of *clients* threads; count the
    statuses, 0 for a client that got no answer (it stops there).
    """
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def run(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        try:
            for i in range(requests):
                conn.request("POST", "/items", f"name=c{number}-{i}", headers)
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses[response.status] += 1
        except OSError:  # A worker that hangs or drops the client: status 0.
            with lock:
                statuses[0] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_gunicorn_preload_after_a_query_at_creation(
    request: pytest.FixtureRequest, through: str
) -> None:
    """``gunicorn --preload`` of an app that queried its database while it
    was created: 4 workers answer 80 concurrent POSTs without one failure,
    every answered write is in the database, and no connection is used by
    two workers.
    """
    if through == "direct":
        url = request.getfixturevalue("postgresql_database")
        direct = url
    else:
        pooled: Pooled = request.getfixturevalue("pooled")
        url, direct = pooled.url("psycopg2"), pooled.direct
    engine = sa.create_engine(direct, poolclass=sa.NullPool)
    preload_metadata.create_all(engine)
    env = {"PRELOAD_ENTRY": json.dumps({"url": url})}
    try:
        with serve({}, 4, env, preload=True, app="tests.preload_app:create_app()") as (
            port,
            logs,
        ):
            statuses = _post_many(port, clients=8, requests=10)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT worker, connection FROM served")).all()
    finally:
        preload_metadata.drop_all(engine)
        engine.dispose()
    assert dict(statuses) == {201: 80}, logs
    assert len(rows) == 80
    workers: dict[str, set[int]] = collections.defaultdict(set)
    for worker, connection in rows:
        workers[connection].add(worker)
    shared = {c: sorted(w) for c, w in workers.items() if len(w) > 1}
    assert shared == {}, "connections used by several workers"


def test_sqlite_after_a_fork(uow: UnitOfWork, tmp_path: pathlib.Path) -> None:
    """On SQLite, a child forked after the parent used a file database opens
    a connection of its own; an in-memory database, which lives in the
    process's memory and is copied with it, keeps its connection, so the
    child sees the parent's rows.
    """
    app = Flask("forked_sqlite", root_path=str(tmp_path))
    app.config["UOW_ENGINES"] = {
        "default": f"sqlite:///{tmp_path / 'file.db'}",
        "memory": "sqlite://",
    }
    uow.init_app(app)
    try:
        with app.app_context():
            for engine in uow.engines.values():
                with engine.begin() as conn:
                    conn.exec_driver_sql("CREATE TABLE t (x int)")
                    conn.exec_driver_sql("INSERT INTO t VALUES (1)")

        def pools() -> dict[str, t.Any]:
            with app.app_context():
                found: dict[str, t.Any] = {}
                for name, engine in uow.engines.items():
                    with engine.connect() as conn:
                        rows = conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
                    found[name] = [id(engine.pool), rows]
                return found

        parent = pools()
        child = in_child(pools)
        assert child["default"][0] != parent["default"][0], "file pool inherited"
        assert child["memory"] == parent["memory"] == [parent["memory"][0], 1]
        assert child["default"][1] == 1
        assert pools() == parent
    finally:
        uow.dispose_engines(app)


def uwsgi_binary() -> str:
    """The ``uwsgi`` program of the test environment (the ``uwsgi`` package
    of the test extra); the test fails under ``CI=true`` if it is missing,
    and is skipped otherwise.
    """
    found = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    found = found or shutil.which("uwsgi")
    if found is None:
        message = (
            "uWSGI is not installed: the uWSGI deployment test needs the"
            " 'uwsgi' program. Install the test extra (pip install -e '.[test]')."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def uwsgi(
    option: str, entry: str, folder: pathlib.Path
) -> cabc.Iterator[tuple[int, list[str]]]:
    """Serve ``tests/preload_app.py`` with uWSGI's master and 4 worker
    processes on loopback, with *option* on; yield its port and a list that
    receives the end of its log once it stopped.
    """
    binary = uwsgi_binary()
    script = folder / "wsgi.py"
    script.write_text(
        "from tests.preload_app import create_app\napplication = create_app()\n"
    )
    port = _free_port()
    logs: list[str] = []
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                binary,
                "--master",
                "--processes=4",
                f"--http11-socket=127.0.0.1:{port}",
                f"--wsgi-file={script}",
                f"--home={sys.prefix}",
                f"--pythonpath={ROOT}",
                f"--{option}",
                "--need-app",
                "--die-on-term",
                "--disable-logging",
            ],
            cwd=ROOT,
            env={**os.environ, "PRELOAD_ENTRY": entry},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            _wait_until_up(port, process)
            yield port, logs
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # uWSGI's master can wait for its workers' "mercy" period on a
                # busy machine; the test's requests are over, so end them all.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.seek(0)
            logs.append(log.read()[-4000:].decode(errors="replace"))


@pytest.mark.parametrize("option", ["py-call-osafterfork", "lazy-apps"])
def test_uwsgi_workers_after_a_query_at_creation(
    postgresql_database: str, tmp_path: pathlib.Path, option: str
) -> None:
    """uWSGI serving an app that queried its database while it was created,
    with either option deploying.rst names: 80 concurrent POSTs on 4
    workers, none failed, and no connection used by two workers. (With
    neither, uWSGI runs no after-fork handler: 120 of 200 POSTs failed when
    measured.)
    """
    engine = sa.create_engine(postgresql_database, poolclass=sa.NullPool)
    preload_metadata.create_all(engine)
    entry = json.dumps({"url": postgresql_database})
    try:
        with uwsgi(option, entry, tmp_path) as (port, logs):
            statuses = _post_many(port, clients=8, requests=10)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT worker, connection FROM served")).all()
    finally:
        preload_metadata.drop_all(engine)
        engine.dispose()
    workers: dict[str, set[int]] = collections.defaultdict(set)
    for worker, connection in rows:
        workers[connection].add(worker)
    shared = {c: w for c, w in workers.items() if len(w) > 1}
    assert dict(statuses) == {201: 80}, logs
    assert len({w for ws in workers.values() for w in ws}) > 1, "one worker served"
    assert shared == {}
