"""Apps and concurrent clients for the deployment tests (issue 21): a small
app whose views say whether their transaction was READ ONLY, and threads of
test clients that share it, as a threaded server's workers do.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import threading
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import has_app_context
from flask import has_request_context
from flask import request
from flask.testing import FlaskClient

from flask_uow import UnitOfWork

from .models import Counter
from .models import Item
from .models import metadata

AppFactory = cabc.Callable[..., Flask]


def create_tables(url: str) -> None:
    """The test tables, made from a direct connection, with one counter."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        metadata.drop_all(engine)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(Counter).values(id=1, value=0))
    finally:
        engine.dispose()


def read_only(uow: UnitOfWork) -> str:
    """``"on"`` or ``"off"``: whether the unit's transaction on the default
    engine is READ ONLY, as PostgreSQL says.
    """
    return str(uow.session.scalar(sa.text("SHOW transaction_read_only")))


def add_views(app: Flask, uow: UnitOfWork) -> None:
    @app.get("/items")
    def items() -> dict[str, t.Any]:
        count = uow.session.scalar(sa.select(sa.func.count()).select_from(Item))
        return {"count": count, "read_only": read_only(uow)}

    @app.post("/items")
    def add() -> tuple[dict[str, t.Any], int]:
        uow.session.add(Item(name=request.form["name"]))
        uow.session.flush()
        return {"read_only": read_only(uow)}, 201

    @app.post("/increment")
    @uow.transactional(retries=100, isolation_level="SERIALIZABLE")
    def increment() -> dict[str, int]:
        counter = uow.session.get_one(Counter, 1)
        counter.value += 1
        return {"value": counter.value}


@pytest.fixture
def make_deployed_app(
    uow: UnitOfWork, tmp_path: pathlib.Path
) -> cabc.Iterator[AppFactory]:
    """Build apps with the views above on the engines given; after the test,
    check that none left a connection checked out or a context pushed, and
    dispose their engines.
    """
    apps: list[tuple[Flask, list[sa.Engine]]] = []

    def make(engines: dict[str, t.Any], **config: t.Any) -> Flask:
        app = Flask(
            f"deployed{len(apps)}",
            root_path=str(tmp_path),
            instance_path=str(tmp_path / "instance"),
        )
        app.config["SECRET_KEY"] = "a test secret"
        app.config["UOW_ENGINES"] = engines
        app.config["UOW_RETRY_DELAY"] = 0.001
        app.config["UOW_REPLICA_BACKOFF"] = 0
        app.config.update(config)
        uow.init_app(app)
        add_views(app, uow)
        with app.app_context():
            used = [*uow.engines.values()]
            for replicas in uow.replica_engines.values():
                used.extend(replicas)
        apps.append((app, used))
        return app

    yield make
    for app, used in apps:
        try:
            assert not has_request_context(), "a request context was left"
            assert not has_app_context(), "an app context was left"
            out = {e.url: e.pool.checkedout() for e in used}  # type: ignore[attr-defined]
            assert not any(out.values()), f"connections left checked out: {out}"
        finally:
            uow.dispose_engines(app)


class Answer(t.NamedTuple):
    method: str
    status: int
    body: t.Any


def hammer(
    app: Flask,
    clients: int,
    requests: int,
    send: cabc.Callable[[FlaskClient, int, int], Answer],
) -> list[Answer]:
    """Run *clients* threads, each with its own test client, each sending
    *requests* requests with ``send(client, thread number, request number)``;
    return every answer. An exception in a thread is an answer with status 0.
    """
    answers: list[Answer] = []
    lock = threading.Lock()

    def run(number: int) -> None:
        client = app.test_client()
        for i in range(requests):
            try:
                answer = send(client, number, i)
            except Exception as e:  # Counted, not lost with the thread.
                answer = Answer("?", 0, f"{type(e).__name__}: {e}")
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def post_or_get(client: FlaskClient, number: int, i: int) -> Answer:
    """Even requests add the item ``c<number>-<i>``, odd ones count items."""
    if i % 2 == 0:
        response = client.post("/items", data={"name": f"c{number}-{i}"})
        return Answer("POST", response.status_code, response.get_json(silent=True))
    response = client.get("/items")
    return Answer("GET", response.status_code, response.get_json(silent=True))


def posted_names(clients: int, requests: int) -> list[str]:
    """The names :func:`post_or_get` posts, sorted."""
    return sorted(
        f"c{n}-{i}" for n in range(clients) for i in range(requests) if i % 2 == 0
    )


def failures(answers: list[Answer]) -> list[Answer]:
    """The answers that are not a success, for assertion messages."""
    return [a for a in answers if a.status not in (200, 201)]


def names(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(sa.text("SELECT name FROM items ORDER BY name")))
    finally:
        engine.dispose()


def counter(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT value FROM counters WHERE id = 1")))
    finally:
        engine.dispose()
