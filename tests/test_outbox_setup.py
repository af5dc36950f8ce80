"""The outbox's setup, bad input, dead letters and test isolation (issue 22):
configuration checked at ``init_app``, arguments checked at ``enqueue``,
nothing attached when it is off, tasks captured under :class:`Isolation`.
"""

from __future__ import annotations

import collections.abc as cabc
import datetime
import logging
import threading
import time
import typing as t

import pytest
import redis
import sqlalchemy as sa

from flask_uow import Isolation
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .outbox_tasks import apply_effect
from .outbox_tasks import record_in_unit
from .redis_server import RedisServer
from .task_workers import Effects

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_outbox_tables")]


@pytest.fixture
def rq_broker(redis_server: RedisServer) -> cabc.Iterator[t.Any]:
    from flask_uow import RQBroker

    connection = redis.Redis.from_url(redis_server.url, socket_connect_timeout=1)
    try:
        yield RQBroker(connection, queue="default")
    finally:
        connection.close()


def test_off_attaches_nothing_and_touches_no_table(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """With ``UOW_OUTBOX`` off (the default) no outbox table is created, none
    is in ``uow.metadatas``, and ``enqueue`` says how to turn it on.
    """
    app = make_app()
    client = app.test_client()
    assert client.get("/").status_code == 404
    with app.app_context():
        names = {name for md in uow.metadatas.values() for name in md.tables}
        assert "uow_outbox" not in names
        with pytest.raises(RuntimeError, match="UOW_OUTBOX"):
            with uow.transaction():
                uow.enqueue(apply_effect, "x")
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        assert not sa.inspect(engine).has_table("uow_outbox")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({}, RuntimeError, "UOW_OUTBOX_BROKER"),
        ({"UOW_OUTBOX_BROKER": "redis://x"}, TypeError, "UOW_OUTBOX_BROKER"),
        ({"UOW_OUTBOX_GRACE": -1}, ValueError, "UOW_OUTBOX_GRACE"),
        ({"UOW_OUTBOX_DEAD_AFTER": 0}, ValueError, "UOW_OUTBOX_DEAD_AFTER"),
        ({"UOW_OUTBOX_RETRY_DELAY": "soon"}, TypeError, "UOW_OUTBOX_RETRY_DELAY"),
        ({"UOW_OUTBOX": "yes"}, TypeError, "UOW_OUTBOX"),
    ],
)
def test_bad_config_fails_at_init_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    rq_broker: t.Any,
    config: dict[str, t.Any],
    error: type[Exception],
    match: str,
) -> None:
    """Each outbox setting is checked when the app is set up, with a message
    naming the key.
    """
    settings: dict[str, t.Any] = {"UOW_OUTBOX": True}
    if config:
        settings["UOW_OUTBOX_BROKER"] = rq_broker
    settings.update(config)
    app = make_app(init=False, **settings)
    with pytest.raises(error, match=match):
        uow.init_app(app)


def test_non_json_argument_is_refused_at_enqueue(
    make_app: AppFactory, uow: UnitOfWork, rq_broker: t.Any
) -> None:
    """An argument JSON cannot carry raises ``TypeError`` at the call, naming
    the argument; nothing is written.
    """
    app = make_app(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=rq_broker)
    with app.app_context():
        with pytest.raises(TypeError, match="'when'.*JSON"):
            with uow.transaction():
                uow.enqueue(apply_effect, "k", when=datetime.datetime.now())
        with pytest.raises(TypeError, match="argument 1.*JSON"):
            with uow.transaction():
                uow.enqueue(apply_effect, "k", {1, 2})
        with pytest.raises(TypeError, match="import"):
            with uow.transaction():
                uow.enqueue(lambda: None)


def test_outbox_tables_are_in_metadatas_and_created_at_first_use(
    make_app: AppFactory, uow: UnitOfWork, rq_broker: t.Any, db_url: str
) -> None:
    """With the outbox on, its tables are in ``uow.metadatas`` (so
    ``create_all`` and Flask-Migrate see them) and exist after the first
    enqueue even without ``create_all``.
    """
    app = make_app(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=rq_broker, UOW_OUTBOX_GRACE=60)
    with app.app_context():
        names = {name for md in uow.metadatas.values() for name in md.tables}
        assert {"uow_outbox", "uow_processed"} <= names
        with uow.transaction():
            key = uow.enqueue(apply_effect, "first")
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT task, payload FROM uow_outbox WHERE key = :k"),
                {"k": key},
            ).one()
        assert row.task == "tests.outbox_tasks.apply_effect"
        assert '"first"' in row.payload
    finally:
        engine.dispose()


def test_tables_created_once_by_concurrent_first_units(
    make_app: AppFactory, uow: UnitOfWork, rq_broker: t.Any, effects: Effects
) -> None:
    """Two units enqueue their first task at the same time, while no table
    exists: the second waits for the first's lock (and commit) instead of
    failing to create the tables again; both rows are written.
    """
    app = make_app(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=rq_broker, UOW_OUTBOX_GRACE=60)
    first_enqueued = threading.Event()
    errors: list[BaseException] = []

    def unit(name: str, before: threading.Event | None) -> None:
        try:
            with app.app_context():
                if before is not None:
                    assert before.wait(10)
                with uow.transaction():
                    uow.enqueue(apply_effect, name)
                    if before is None:
                        first_enqueued.set()
                        time.sleep(0.5)  # Still holding the lock.
        except BaseException as e:  # Reported by the test thread.
            errors.append(e)

    threads = [
        threading.Thread(target=unit, args=("first", None)),
        threading.Thread(target=unit, args=("second", first_enqueued)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert effects.scalar("SELECT count(*) FROM uow_outbox") == 2


def test_dead_after_failed_publishes(
    make_app: AppFactory,
    uow: UnitOfWork,
    rq_broker: t.Any,
    redis_server: RedisServer,
    effects: Effects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the broker down, each relay pass fails and counts an attempt;
    after ``UOW_OUTBOX_DEAD_AFTER`` the row is moved aside as dead, logged,
    and listed by ``flask uow relay --dead``.
    """
    app = make_app(
        UOW_OUTBOX=True,
        UOW_OUTBOX_BROKER=rq_broker,
        UOW_OUTBOX_GRACE=0,
        UOW_OUTBOX_RETRY_DELAY=0,
        UOW_OUTBOX_DEAD_AFTER=2,
    )
    redis_server.stop()
    with app.app_context():
        with uow.transaction():
            key = uow.enqueue(apply_effect, "doomed")
    runner = app.test_cli_runner()
    with caplog.at_level(logging.WARNING, logger="flask_uow"):
        for _ in range(2):
            assert runner.invoke(args=["uow", "relay", "--once"]).exit_code == 0
    assert any(
        key in r.getMessage() and "dead" in r.getMessage() for r in caplog.records
    )
    dead = runner.invoke(args=["uow", "relay", "--dead"])
    assert dead.exit_code == 0
    assert key in dead.output and "tests.outbox_tasks.apply_effect" in dead.output
    assert effects.scalar("SELECT count(*) FROM uow_outbox WHERE dead_at IS NULL") == 0


def test_failed_publish_backs_off(
    make_app: AppFactory,
    uow: UnitOfWork,
    rq_broker: t.Any,
    redis_server: RedisServer,
    effects: Effects,
) -> None:
    """A failed publish counts an attempt, records the error and moves the
    row's due time forward by the retry delay (with jitter, at least half of
    it): the next relay pass leaves it alone; once due, it is published.
    """
    app = make_app(
        UOW_OUTBOX=True,
        UOW_OUTBOX_BROKER=rq_broker,
        UOW_OUTBOX_GRACE=0,
        UOW_OUTBOX_RETRY_DELAY=30,
    )
    redis_server.stop()
    with app.app_context():
        with uow.transaction():
            key = uow.enqueue(apply_effect, "later")
    runner = app.test_cli_runner()
    assert "Published 0 tasks" in runner.invoke(args=["uow", "relay", "--once"]).output
    row = "SELECT attempts, last_error FROM uow_outbox WHERE key = :key"
    with effects.engine.connect() as conn:
        attempts, error = conn.execute(sa.text(row), {"key": key}).one()
        waits = conn.execute(
            sa.select(sa.text("due_at"), sa.text("created_at")).select_from(
                sa.table("uow_outbox")
            )
        ).one()
    assert attempts == 1 and "Connection" in error
    due, created = (
        value
        if isinstance(value, datetime.datetime)
        else datetime.datetime.fromisoformat(value)
        for value in waits
    )
    assert due - created >= datetime.timedelta(seconds=15)
    redis_server.start()
    # Not due yet: the broker is back, but the relay waits for the backoff.
    assert "Published 0 tasks" in runner.invoke(args=["uow", "relay", "--once"]).output
    assert effects.scalar("SELECT attempts FROM uow_outbox") == 1
    with effects.engine.begin() as conn:
        conn.execute(sa.text("UPDATE uow_outbox SET due_at = created_at"))
    assert "Published 1 tasks" in runner.invoke(args=["uow", "relay", "--once"]).output
    assert effects.scalar("SELECT count(*) FROM uow_outbox WHERE sent_at IS NULL") == 0


def test_isolation_captures_enqueued_tasks(
    make_app: AppFactory,
    uow: UnitOfWork,
    rq_broker: t.Any,
    redis_server: RedisServer,
    effects: Effects,
) -> None:
    """Under test isolation, committed units' tasks are captured, not
    published, savepoint rollbacks drop theirs, ``run_tasks`` runs them in
    the test, and the outbox rows roll back with the rest.
    """
    app = make_app(UOW_OUTBOX=True, UOW_OUTBOX_BROKER=rq_broker, UOW_OUTBOX_GRACE=0)

    @app.post("/t/<key>")
    def view(key: str) -> tuple[str, int]:
        uow.enqueue(record_in_unit, key)
        return key, 201 if key != "bad" else 400

    @app.post("/nested/<key>")
    def nested(key: str) -> tuple[str, int]:
        with uow.transaction():
            with pytest.raises(LookupError):
                with uow.transaction():  # A savepoint, rolled back.
                    uow.enqueue(record_in_unit, f"{key}-inner")
                    raise LookupError
        return key, 201

    with Isolation(app) as isolation:
        client = app.test_client()
        assert client.post("/t/a").status_code == 201
        assert client.post("/t/bad").status_code == 400
        assert client.post("/nested/n").status_code == 201
        captured = isolation.tasks
        assert [(task.name, task.args) for task in captured] == [
            ("tests.outbox_tasks.record_in_unit", ("a",))
        ]
        assert redis.Redis.from_url(redis_server.url).llen("rq:queue:default") == 0
        assert isolation.run_tasks() == 1
        assert isolation.tasks == []
        # The task ran in the test, its write isolated like the app's.
        effect = sa.text("SELECT count(*) FROM effects WHERE key = 'a'")
        assert isolation.connections["default"].execute(effect).scalar() == 1
    assert effects.counts() == {}
    # The outbox table was created under the isolation, and rolled back with
    # the rows in it.
    assert not sa.inspect(effects.engine).has_table("uow_outbox")
