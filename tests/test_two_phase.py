"""Two-phase commit across engines: atomic commits, recovery after crashes."""

from __future__ import annotations

import collections.abc as cabc
import json
import os
import pathlib
import subprocess
import sys
import threading
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import after_commit
from flask_uow import Isolation
from flask_uow import UnitOfWork

from .conftest import check_no_leaks
from .conftest import PoolWatch
from .conftest import watch_pools
from .pgtwophase import ACCOUNTS
from .pgtwophase import balances
from .pgtwophase import prepared_gids

ROOT = pathlib.Path(__file__).resolve().parent.parent
AppFactory = cabc.Callable[..., Flask]


@pytest.fixture
def make_two_phase_app(
    uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> cabc.Iterator[AppFactory]:
    """Apps on the three databases with two-phase commit, with routes that
    write to the engines named in the URL; leak-checked after the test.
    """
    apps: list[tuple[Flask, PoolWatch]] = []

    def make(**config: t.Any) -> Flask:
        app = Flask(f"twophase{len(apps)}")
        app.config["UOW_ENGINES"] = dict(two_phase_urls)
        app.config["UOW_TWO_PHASE"] = True
        app.config.update(config)
        uow.init_app(app)
        apps.append((app, watch_pools(uow, app)))

        @app.post("/open/<keys>/<int:id>")
        def open_accounts(keys: str, id: int) -> str:
            for key in keys.split(","):
                uow.session.execute(sa.insert(ACCOUNTS[key]).values(id=id, balance=100))
            uow.on_commit(lambda: app.config.setdefault("CALLBACKS", []).append(id))
            return "opened"

        @app.errorhandler(Exception)
        def failed(e: Exception) -> tuple[str, int]:
            return f"{type(e).__name__}: {e}", 500

        return app

    yield make
    for app, watch in apps:
        try:
            check_no_leaks(uow, app, watch)
        finally:
            uow.dispose_engines(app)


def decision_count(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        if conn.scalar(sa.text("SELECT to_regclass('flask_uow_decisions')")) is None:
            count = 0
        else:
            count = conn.scalar(sa.text("SELECT count(*) FROM flask_uow_decisions"))
    engine.dispose()
    return int(count)


def statements(app: Flask, uow: UnitOfWork) -> list[str]:
    """Record every statement the app's engines send from now on."""
    sent: list[str] = []
    with app.app_context():
        for engine in uow.engines.values():
            sa.event.listen(
                engine,
                "before_cursor_execute",
                lambda conn, cursor, statement, *a: sent.append(statement),
            )
    return sent


def test_commit_across_engines_is_atomic(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """A request that writes to three engines commits on all of them through
    PREPARE and COMMIT PREPARED, with a decision record, and leaves nothing
    prepared; the callback and the after_commit signal run once.
    """
    app = make_two_phase_app()
    signals: list[object] = []
    sent = statements(app, uow)
    with after_commit.connected_to(lambda sender, **kw: signals.append(sender), app):
        response = app.test_client().post("/open/default,other,third/1")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [balances(url) for url in two_phase_urls.values()] == [{1: 100}] * 3
    assert sum(s.startswith("PREPARE TRANSACTION") for s in sent) == 2
    assert decision_count(two_phase_urls["default"]) == 1
    assert app.config["CALLBACKS"] == [1]
    assert signals == [app]


def test_one_engine_commits_without_two_phase(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """A unit that wrote to one engine, even after reading another, commits
    normally: no PREPARE, no decision record.
    """
    app = make_two_phase_app()
    sent = statements(app, uow)

    @app.post("/read-and-write")
    def read_and_write() -> str:
        uow.session.execute(sa.select(ACCOUNTS["default"]))
        uow.session.execute(sa.insert(ACCOUNTS["other"]).values(id=2, balance=5))
        return "ok"

    assert app.test_client().post("/read-and-write").status_code == 200
    assert balances(two_phase_urls["other"]) == {2: 5}
    assert not any(s.startswith("PREPARE") for s in sent)
    assert decision_count(two_phase_urls["default"]) == 0


def test_transaction_block_commits_across_engines(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """A 'uow.transaction()' block outside requests commits on both engines
    with two-phase commit.
    """
    app = make_two_phase_app()
    sent = statements(app, uow)
    with app.app_context():
        with uow.transaction() as session:
            session.execute(sa.insert(ACCOUNTS["default"]).values(id=3, balance=1))
            session.execute(sa.insert(ACCOUNTS["other"]).values(id=3, balance=2))
    assert balances(two_phase_urls["default"]) == {3: 1}
    assert balances(two_phase_urls["other"]) == {3: 2}
    assert sum(s.startswith("PREPARE TRANSACTION") for s in sent) == 1


def test_failed_prepare_rolls_back_every_engine(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """When a PREPARE fails, nothing is committed anywhere, the prepared
    transactions are rolled back, the request gets the error response, and no
    callback or after_commit signal runs.
    """
    app = make_two_phase_app()
    signals: list[object] = []

    @app.post("/bad")
    def bad() -> str:
        uow.session.execute(sa.insert(ACCOUNTS["default"]).values(id=4, balance=1))
        uow.session.execute(sa.insert(ACCOUNTS["other"]).values(id=4, balance=1))
        # PostgreSQL cannot prepare a transaction that used a temporary table.
        third = {"bind": uow.engines["third"]}
        uow.session.execute(
            sa.text("CREATE TEMP TABLE t (x int)"), bind_arguments=third
        )
        uow.session.execute(sa.insert(ACCOUNTS["third"]).values(id=4, balance=1))
        uow.on_commit(lambda: signals.append("callback"))
        return "ok"

    with after_commit.connected_to(lambda sender, **kw: signals.append(sender), app):
        response = app.test_client().post("/bad")
    assert response.status_code == 500
    assert "temporary" in response.get_data(as_text=True)
    assert [balances(url) for url in two_phase_urls.values()] == [{}] * 3
    assert signals == []


@pytest.fixture
def unprepared_database(postgresql_server: sa.URL) -> cabc.Iterator[str]:
    """A database with the accounts table, of its own, on the suite's main
    server, whose max_prepared_transactions is PostgreSQL's default, 0.
    """
    name = f"unprepared_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        postgresql_server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgresql_server.set(database=name).render_as_string(False)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    ACCOUNTS["default"].metadata.create_all(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


def test_prepared_transactions_disabled_is_reported(
    uow: UnitOfWork, unprepared_database: str
) -> None:
    """On a server with max_prepared_transactions = 0 the first cross-engine
    commit fails with an error that says how to fix it, and nothing is
    committed.
    """
    postgresql_database = unprepared_database
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {
        "default": postgresql_database,
        "other": postgresql_database,
    }
    app.config["UOW_TWO_PHASE"] = True
    uow.init_app(app)
    watch = watch_pools(uow, app)

    @app.post("/")
    def write() -> str:
        uow.session.execute(sa.insert(ACCOUNTS["default"]).values(id=1, balance=1))
        uow.session.execute(sa.insert(ACCOUNTS["other"]).values(id=2, balance=1))
        return "ok"

    @app.errorhandler(RuntimeError)
    def failed(e: RuntimeError) -> tuple[str, int]:
        return str(e), 503

    response = app.test_client().post("/")
    assert response.status_code == 503
    assert "'max_prepared_transactions'" in response.get_data(as_text=True)
    assert "restart the server" in response.get_data(as_text=True)
    assert balances(postgresql_database) == {}
    check_no_leaks(uow, app, watch)
    uow.dispose_engines(app)


@pytest.mark.parametrize("value", ["yes", 1])
def test_two_phase_config_must_be_a_bool(uow: UnitOfWork, value: object) -> None:
    """A UOW_TWO_PHASE that is not a bool is refused by init_app."""
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {"default": "sqlite://"}
    app.config["UOW_TWO_PHASE"] = value
    with pytest.raises(TypeError, match="'UOW_TWO_PHASE' must be True or False"):
        uow.init_app(app)


def test_sqlite_engine_refused_with_two_phase(
    uow: UnitOfWork, postgresql_database: str
) -> None:
    """init_app refuses two-phase commit when an engine cannot prepare."""
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {"default": postgresql_database, "cache": "sqlite://"}
    app.config["UOW_TWO_PHASE"] = True
    with pytest.raises(ValueError, match=r"UOW_ENGINES\['cache'\] is a 'sqlite'"):
        uow.init_app(app)
    assert "uow" not in app.extensions


CRASH_POINTS = [
    ("before-prepare", False),
    ("after-first-prepare", False),
    ("after-all-prepares", False),
    ("after-decision", True),
    ("after-first-commit-prepared", True),
]


def run_child(urls: dict[str, str], crash_at: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        UOW_TEST_URLS=json.dumps(urls),
        UOW_TEST_CRASH_AT=crash_at,
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", "tests.twophase_child"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("crash_at", "committed"), CRASH_POINTS)
def test_recovery_after_a_crash(
    make_two_phase_app: AppFactory,
    uow: UnitOfWork,
    two_phase_urls: dict[str, str],
    crash_at: str,
    committed: bool,
) -> None:
    """A process killed at any point of a two-phase commit leaves databases
    that recovery makes agree: all have the row if the decision was recorded,
    none otherwise, and no prepared transaction is left.
    """
    child = run_child(two_phase_urls, crash_at)
    assert child.returncode == 17, child.stderr
    app = make_two_phase_app()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["uow", "recover"])
    assert result.exit_code == 0, result.output
    expected = {1: 100} if committed else {}
    assert [balances(url) for url in two_phase_urls.values()] == [expected] * 3
    assert [prepared_gids(url) for url in two_phase_urls.values()] == [[]] * 3
    if crash_at != "before-prepare":
        outcome = "committed" if committed else "rolled back"
        assert result.output.startswith(outcome), result.output


def test_dry_run_changes_nothing(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """'flask uow recover --dry-run' reports what it would do and leaves the
    prepared transactions in place.
    """
    assert run_child(two_phase_urls, "after-decision").returncode == 17
    app = make_two_phase_app()
    result = app.test_cli_runner().invoke(args=["uow", "recover", "--dry-run"])
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["would commit"] * 2
    assert {line.rsplit("'", 2)[1] for line in lines} == {"other", "third"}
    assert len(prepared_gids(two_phase_urls["other"])) == 1
    with app.app_context():
        assert {r.outcome for r in uow.recover()} == {"committed"}
    assert [balances(url) for url in two_phase_urls.values()] == [{1: 100}] * 3


def test_recovery_leaves_other_prepared_transactions_alone(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """Recovery never touches a prepared transaction it did not create."""
    engine = sa.create_engine(two_phase_urls["other"], poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.insert(ACCOUNTS["other"]).values(id=9, balance=9))
        conn.exec_driver_sql("PREPARE TRANSACTION 'other_software_1'")
    app = make_two_phase_app()
    try:
        result = app.test_cli_runner().invoke(args=["uow", "recover"])
        assert result.output == "No prepared transaction of this app is in doubt.\n"
        assert prepared_gids(two_phase_urls["other"]) == ["other_software_1"]
    finally:
        with engine.connect() as conn:
            conn.connection.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            conn.exec_driver_sql("ROLLBACK PREPARED 'other_software_1'")
        engine.dispose()


def test_recovery_deletes_old_decisions(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """Recovery deletes decision records older than an hour, and keeps newer
    ones.
    """
    app = make_two_phase_app()
    assert app.test_client().post("/open/default,other/1").status_code == 200
    engine = sa.create_engine(two_phase_urls["default"], poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO flask_uow_decisions (id, committed, created)"
            " VALUES ('old', true, now() - interval '2 hours')"
        )
    with app.app_context():
        assert uow.recover() == []
    with engine.connect() as conn:
        ids = conn.exec_driver_sql("SELECT id FROM flask_uow_decisions").scalars()
        assert "old" not in list(ids)
    engine.dispose()
    assert decision_count(two_phase_urls["default"]) == 1


def test_recover_needs_two_phase(uow: UnitOfWork, tmp_path: pathlib.Path) -> None:
    """Recovery of an app without two-phase commit says how to turn it on."""
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'a.db'}"}
    uow.init_app(app)
    result = app.test_cli_runner().invoke(args=["uow", "recover"])
    assert result.exit_code == 1
    assert "Set 'UOW_TWO_PHASE = True'" in result.output
    uow.dispose_engines(app)


def test_concurrent_transfers_conserve_totals(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """8 threads x 50 transfers between two databases with two-phase commit
    keep the sum of the balances; nothing is left prepared.
    """
    app = make_two_phase_app(
        UOW_ENGINES={
            "default": two_phase_urls["default"],
            "other": two_phase_urls["other"],
        }
    )
    for key in ("default", "other"):
        engine = sa.create_engine(two_phase_urls[key], poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(ACCOUNTS[key]), [{"id": i, "balance": 1000} for i in range(4)]
            )
        engine.dispose()

    @app.post("/transfer/<int:n>")
    def transfer(n: int) -> str:
        a, b = ACCOUNTS["default"], ACCOUNTS["other"]
        account = n % 4
        amount = 1 if n % 2 else -1
        uow.session.execute(
            sa.update(a).where(a.c.id == account).values(balance=a.c.balance - amount)
        )
        uow.session.execute(
            sa.update(b).where(b.c.id == account).values(balance=b.c.balance + amount)
        )
        return "ok"

    failures: list[int] = []

    def worker(start: int) -> None:
        client = app.test_client()
        for n in range(start, start + 50):
            status = client.post(f"/transfer/{n}").status_code
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=worker, args=(i * 50,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    first, second = (
        balances(two_phase_urls["default"]),
        balances(two_phase_urls["other"]),
    )
    assert sum(first.values()) + sum(second.values()) == 8000
    assert first != {i: 1000 for i in range(4)}


def test_savepoints_inside_a_two_phase_transaction(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """Savepoints released and rolled back inside a cross-engine transaction
    keep their meaning; the outermost commit is a two-phase commit.
    """
    app = make_two_phase_app()
    with app.app_context():
        with uow.transaction() as session:
            session.execute(sa.insert(ACCOUNTS["default"]).values(id=5, balance=1))
            with uow.transaction():
                session.execute(sa.insert(ACCOUNTS["other"]).values(id=5, balance=2))
            with pytest.raises(LookupError), uow.transaction():
                session.execute(sa.insert(ACCOUNTS["other"]).values(id=6, balance=3))
                raise LookupError
    assert balances(two_phase_urls["default"]) == {5: 1}
    assert balances(two_phase_urls["other"]) == {5: 2}
    assert decision_count(two_phase_urls["default"]) == 1


def test_single_engine_request_has_one_connection(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """A request on the default engine alone commits as without two-phase
    commit.
    """
    app = make_two_phase_app()
    sent = statements(app, uow)
    assert app.test_client().post("/open/default/7").status_code == 200
    assert balances(two_phase_urls["default"]) == {7: 100}
    assert not any("pg_current_xact_id" in s or "PREPARE" in s for s in sent)


def test_lost_participant_is_committed_by_recovery(
    make_two_phase_app: AppFactory,
    uow: UnitOfWork,
    two_phase_urls: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When a participant's connection is lost after the decision, the
    request still succeeds (the commit is decided), the failure is logged,
    and recovery commits the participant.
    """
    app = make_two_phase_app()
    admin = sa.create_engine(two_phase_urls["other"], poolclass=sa.NullPool)

    def kill(conn: sa.Connection) -> None:
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with admin.connect() as killer:
            killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    with app.app_context():
        sa.event.listen(uow.engines["other"], "commit", kill)
    response = app.test_client().post("/open/default,other/8")
    admin.dispose()
    assert response.status_code == 200
    assert balances(two_phase_urls["default"]) == {8: 100}
    assert balances(two_phase_urls["other"]) == {}
    assert "Run 'flask uow recover' to finish it." in caplog.text
    with app.app_context():
        (resolution,) = uow.recover()
    assert (resolution.engine, resolution.outcome) == ("other", "committed")
    assert str(resolution).startswith("committed: flask_uow:")
    assert balances(two_phase_urls["other"]) == {8: 100}


def test_recovery_waits_for_a_unit_still_committing(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """A prepared transaction whose coordinator has not decided yet is left
    alone ("in progress") rather than rolled back under it; once the
    coordinator commits, recovery commits it.
    """
    app = make_two_phase_app()
    with app.app_context():
        namespace = uow._coordinators[app].namespace()
    gid = f"flask_uow:{namespace}:d1:other"
    coordinator = sa.create_engine(two_phase_urls["default"], poolclass=sa.NullPool)
    participant = sa.create_engine(two_phase_urls["other"], poolclass=sa.NullPool)
    with participant.connect() as conn:
        conn.execute(sa.insert(ACCOUNTS["other"]).values(id=10, balance=1))
        conn.exec_driver_sql(f"PREPARE TRANSACTION '{gid}'")
    with coordinator.connect() as deciding:
        deciding.execute(
            sa.text(
                "INSERT INTO flask_uow_decisions (id, committed) VALUES ('d1', true)"
            )
        )
        with app.app_context():
            assert [r.outcome for r in uow.recover()] == ["in progress"]
        deciding.commit()
    with app.app_context():
        assert [r.outcome for r in uow.recover()] == ["committed"]
    assert balances(two_phase_urls["other"]) == {10: 1}
    coordinator.dispose()
    participant.dispose()


def test_isolated_tests_skip_two_phase(
    make_two_phase_app: AppFactory, uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> None:
    """Under test isolation a cross-engine commit is a savepoint release: no
    PREPARE, and everything is rolled back when the isolation ends.
    """
    app = make_two_phase_app()
    sent = statements(app, uow)
    with Isolation(app) as isolation:
        assert app.test_client().post("/open/default,other/11").status_code == 200
        assert app.config["CALLBACKS"] == [11]
        assert len(isolation.callbacks) == 1
    assert not any(s.startswith("PREPARE") for s in sent)
    assert [balances(url) for url in two_phase_urls.values()] == [{}] * 3
