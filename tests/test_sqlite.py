"""SQLite under concurrent writes: write transactions take the lock at BEGIN,
read requests begin deferred, and file databases get WAL, a busy timeout and
foreign keys. Checked from another connection to the same file.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask

from flask_uow import is_transient_error
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Counter
from .models import Item

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


def database_path(db_url: str) -> str:
    return sa.make_url(db_url).database or ""


def writer_can_lock(db_url: str) -> bool:
    """Whether another connection can take the write lock right now."""
    conn = sqlite3.connect(database_path(db_url), isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if "database is locked" not in str(e):
            raise
        return False
    else:
        conn.execute("ROLLBACK")
        return True
    finally:
        conn.close()


def reader_can_read(db_url: str) -> bool:
    """Whether another connection can read right now."""
    conn = sqlite3.connect(database_path(db_url), isolation_level=None, timeout=0)
    try:
        conn.execute("SELECT count(*) FROM items").fetchall()
    except sqlite3.OperationalError as e:
        if "database is locked" not in str(e):
            raise
        return False
    else:
        return True
    finally:
        conn.close()


def engine_entry(db_url: str, **options: t.Any) -> dict[str, t.Any]:
    return {"default": {"url": db_url, **options}}


@SQLITE
@pytest.mark.parametrize(
    ("method", "locked"),
    [
        ("POST", True),
        ("PUT", True),
        ("PATCH", True),
        ("DELETE", True),
        ("GET", False),
        ("HEAD", False),
        ("OPTIONS", False),
    ],
)
def test_unsafe_requests_take_the_write_lock_at_their_first_statement(
    flask_app: Flask, uow: UnitOfWork, db_url: str, method: str, locked: bool
) -> None:
    """A request whose method is not safe begins IMMEDIATE: its first read
    already holds the write lock; a GET, HEAD or OPTIONS request only reads.
    """
    seen: list[bool] = []

    @flask_app.route("/", methods=[method])
    def view() -> str:
        uow.session.execute(sa.select(Item)).all()
        seen.append(writer_can_lock(db_url))
        return "ok"

    assert flask_app.test_client().open("/", method=method).status_code == 200
    assert seen == [not locked]


@SQLITE
def test_a_read_request_does_not_block_a_writer(
    flask_app: Flask, uow: UnitOfWork, db: Database, db_url: str
) -> None:
    """While a GET request's transaction is open, another connection writes
    and commits (WAL: readers and the writer do not wait for each other).
    """

    @flask_app.get("/")
    def view() -> str:
        before = uow.session.scalars(sa.select(Item.name)).all()
        conn = sqlite3.connect(database_path(db_url), isolation_level=None, timeout=0)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO items (name) VALUES ('written')")
        conn.execute("COMMIT")
        conn.close()
        # The request still reads its own snapshot.
        after = uow.session.scalars(sa.select(Item.name)).all()
        return f"{before} {after}"

    assert flask_app.test_client().get("/").data == b"[] []"
    assert db.names() == ["written"]


@SQLITE
def test_transaction_block_begins_immediate_in_a_read_request(
    flask_app: Flask, uow: UnitOfWork, db_url: str
) -> None:
    """A transaction() block in a GET view holds the write lock from its
    first statement; after it, the request reads deferred again.
    """
    seen = {}

    @flask_app.get("/")
    def view() -> str:
        with uow.transaction() as session:
            session.execute(sa.select(Item)).all()
            seen["in block"] = writer_can_lock(db_url)
        uow.session.execute(sa.select(Item)).all()
        seen["after block"] = writer_can_lock(db_url)
        return "ok"

    assert flask_app.test_client().get("/").status_code == 200
    assert seen == {"in block": False, "after block": True}


@SQLITE
def test_transactional_function_outside_requests_begins_immediate(
    flask_app: Flask, uow: UnitOfWork, db_url: str
) -> None:
    """Outside requests the unit of work reads deferred, and a transactional
    function (a CLI command's, say) begins IMMEDIATE.
    """
    seen = {}

    @uow.transactional
    def job() -> None:
        uow.session.execute(sa.select(Item)).all()
        seen["transactional"] = writer_can_lock(db_url)

    with flask_app.app_context():
        uow.session.execute(sa.select(Item)).all()
        seen["plain session"] = writer_can_lock(db_url)
        job()
    assert seen == {"plain session": True, "transactional": False}


@SQLITE
def test_sqlite_begin_argument_overrides_the_default(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """transaction(sqlite_begin=...) chooses the mode of one transaction:
    deferred leaves the lock free, exclusive also keeps readers out (rollback
    journal), and a savepoint's own argument changes nothing.
    """
    app = make_app(
        UOW_ENGINES=engine_entry(db_url, sqlite_pragmas={"journal_mode": "DELETE"})
    )
    seen: dict[str, t.Any] = {}
    with app.app_context():
        with uow.transaction(sqlite_begin="deferred") as session:
            session.execute(sa.select(Item)).all()
            seen["deferred"] = writer_can_lock(db_url), reader_can_read(db_url)
            with uow.transaction(sqlite_begin="exclusive"):
                session.execute(sa.select(Item)).all()
                seen["savepoint"] = writer_can_lock(db_url)
        with uow.transaction(sqlite_begin="IMMEDIATE") as session:
            session.execute(sa.select(Item)).all()
            seen["immediate"] = writer_can_lock(db_url), reader_can_read(db_url)
        with uow.transaction(sqlite_begin="exclusive") as session:
            session.execute(sa.select(Item)).all()
            seen["exclusive"] = writer_can_lock(db_url), reader_can_read(db_url)
    assert seen == {
        "deferred": (True, True),
        "savepoint": True,
        "immediate": (False, True),
        "exclusive": (False, False),
    }


@SQLITE
def test_engine_default_mode_applies_to_write_transactions(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """An engine's 'sqlite_begin' is the mode of its write transactions:
    'deferred' gives back plain BEGIN for POST units and transactions alike.
    """
    app = make_app(UOW_ENGINES=engine_entry(db_url, sqlite_begin="deferred"))
    seen = []

    @app.post("/")
    def view() -> str:
        uow.session.execute(sa.select(Item)).all()
        seen.append(writer_can_lock(db_url))
        with uow.transaction() as session:
            session.execute(sa.select(Item)).all()
            seen.append(writer_can_lock(db_url))
        return "ok"

    assert app.test_client().post("/").status_code == 200
    assert seen == [True, True]


@SQLITE
def test_extra_engines_begin_the_same_way(
    make_app: AppFactory, uow: UnitOfWork, db_url: str, tmp_path: pathlib.Path
) -> None:
    """The begin mode applies to every SQLite engine the unit uses, extra
    engines selected by bind key included.
    """
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other = Database(other_url)
    table = sa.Table(
        "items", sa.MetaData(), sa.Column("id", sa.Integer), info={"bind_key": "o"}
    )
    table.create(other.engine)
    other.engine.dispose()
    app = make_app(UOW_ENGINES={"default": db_url, "o": other_url})
    seen = []

    @app.post("/")
    def view() -> str:
        uow.session.execute(sa.select(table)).all()
        seen.append(writer_can_lock(other_url))
        return "ok"

    assert app.test_client().post("/").status_code == 200
    assert seen == [False]


@SQLITE
@pytest.mark.parametrize(("mode", "outcome"), [("deferred", 1), ("immediate", 2)])
def test_read_then_write_in_two_threads(
    make_app: AppFactory,
    uow: UnitOfWork,
    db: Database,
    db_url: str,
    mode: str,
    outcome: int,
) -> None:
    """The lock upgrade: two transactions read a counter and then write it.
    Begun deferred, the first to write after the other read fails at once with
    "database is locked"; begun IMMEDIATE, the second waits and both commit.
    """
    app = make_app(UOW_ENGINES=engine_entry(db_url, sqlite_begin=mode))
    with app.app_context(), uow.transaction() as session:
        session.add(Counter(id=1, value=0))
    first_read, second_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    @uow.transactional
    def increment(then: threading.Event, wait_for: threading.Event | None) -> None:
        counter = uow.session.get_one(Counter, 1)
        then.set()
        if wait_for is not None:
            # Deferred: the other commits meanwhile. Immediate: it cannot
            # begin before this commits, so this stops waiting.
            wait_for.wait(timeout=0.5)
        counter.value += 1

    def run(then: threading.Event, wait_for: threading.Event | None) -> None:
        try:
            with app.app_context():
                increment(then, wait_for)
        except Exception as e:
            errors.append(e)

    first = threading.Thread(target=run, args=(first_read, second_done))
    first.start()
    first_read.wait(timeout=5)
    second = threading.Thread(target=run, args=(second_done, None))
    second.start()
    first.join()
    second.join()
    assert db.scalar("SELECT value FROM counters") == outcome
    if mode == "deferred":
        [error] = errors
        assert isinstance(error, sa_exc.OperationalError)
        assert "database is locked" in str(error)
    else:
        assert errors == []


@SQLITE
def test_locked_begin_is_transient_and_retried(
    make_app: AppFactory, uow: UnitOfWork, db: Database, db_url: str
) -> None:
    """BEGIN IMMEDIATE that times out raises SQLAlchemy's OperationalError,
    a transient error: the transaction is retried, even when it failed while
    beginning (an isolation level makes it begin at once).
    """
    app = make_app(UOW_ENGINES=engine_entry(db_url, sqlite_pragmas={"busy_timeout": 0}))
    with app.app_context():
        uow.session.execute(sa.select(1))  # The file is now in WAL mode.
    lock = sqlite3.connect(database_path(db_url), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    errors: list[BaseException] = []

    @uow.retry_classifier
    def release_then_retry(exc: BaseException) -> bool:
        errors.append(exc)
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        return is_transient_error(exc)

    @app.post("/")
    @uow.transactional(retries=1, isolation_level="SERIALIZABLE")
    def view() -> str:
        uow.session.add(Item(name="saved"))
        return "ok"

    try:
        assert app.test_client().post("/").status_code == 200
    finally:
        lock.close()
    [error] = errors
    assert isinstance(error, sa_exc.OperationalError)
    assert "BEGIN IMMEDIATE" in str(error) and "database is locked" in str(error)
    assert db.names() == ["saved"]


def pragmas(uow: UnitOfWork) -> dict[str, t.Any]:
    names = ["journal_mode", "synchronous", "foreign_keys", "busy_timeout"]
    return {
        name: uow.session.execute(sa.text(f"PRAGMA {name}")).scalar() for name in names
    }


@SQLITE
def test_file_databases_get_wal_and_the_pragmas(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A file database is switched to WAL (another connection sees it) and
    each connection gets synchronous=NORMAL, foreign keys and a 5 s busy
    timeout.
    """
    with flask_app.app_context():
        assert pragmas(uow) == {
            "journal_mode": "wal",
            "synchronous": 1,
            "foreign_keys": 1,
            "busy_timeout": 5000,
        }
    assert db.scalar("PRAGMA journal_mode") == "wal"


@SQLITE
def test_pragmas_are_overridable(
    make_app: AppFactory, uow: UnitOfWork, db: Database, db_url: str
) -> None:
    """Each pragma can be changed or left to SQLite (None); without WAL,
    synchronous keeps SQLite's default.
    """
    app = make_app(
        UOW_ENGINES=engine_entry(
            db_url,
            sqlite_pragmas={
                "journal_mode": "truncate",
                "busy_timeout": 250,
                "foreign_keys": None,
            },
        )
    )
    with app.app_context():
        assert pragmas(uow) == {
            "journal_mode": "truncate",
            "synchronous": 2,
            "foreign_keys": 0,
            "busy_timeout": 250,
        }
    assert db.scalar("PRAGMA journal_mode") == "delete"  # Only WAL persists.


@SQLITE
@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///file:mem?mode=memory&uri=true"]
)
def test_in_memory_databases_keep_working(
    make_app: AppFactory, uow: UnitOfWork, url: str
) -> None:
    """An in-memory database has no journal to set; it gets foreign keys, and
    requests of every kind share it.
    """
    app = make_app(UOW_ENGINES={"default": url})
    with app.app_context():
        assert pragmas(uow)["journal_mode"] == "memory"
        assert pragmas(uow)["foreign_keys"] == 1
        uow.session.execute(sa.text("CREATE TABLE notes (text TEXT)"))
        uow.session.commit()

    @app.post("/")
    def write() -> str:
        uow.session.execute(sa.text("INSERT INTO notes VALUES ('hi')"))
        return "ok"

    @app.get("/")
    def read() -> str:
        return str(uow.session.execute(sa.text("SELECT count(*) FROM notes")).scalar())

    client = app.test_client()
    assert client.post("/").status_code == 200
    assert client.get("/").data == b"1"
    with app.app_context():
        uow.session.execute(sa.text("DROP TABLE notes"))
        uow.session.commit()


@SQLITE
@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        (
            {"sqlite_begin": "later"},
            ValueError,
            r"UOW_ENGINES\['default'\]\['sqlite_begin'\]='later' is not a SQLite"
            r" begin mode\. Use 'deferred', 'immediate' or 'exclusive'",
        ),
        (
            {"sqlite_pragmas": "WAL"},
            TypeError,
            r"\['sqlite_pragmas'\] must be a dict that maps pragma names",
        ),
        (
            {"sqlite_pragmas": {"cache_size": 10}},
            ValueError,
            r"unknown pragma 'cache_size'\. Use 'busy_timeout', 'journal_mode',"
            r" 'synchronous', 'foreign_keys'",
        ),
        (
            {"sqlite_pragmas": {"journal_mode": "wall"}},
            ValueError,
            r"\['journal_mode'\] is 'wall', which SQLite does not accept\. Use one"
            r" of 'DELETE', 'TRUNCATE', 'PERSIST', 'MEMORY', 'WAL', 'OFF'",
        ),
        (
            {"sqlite_pragmas": {"synchronous": 1}},
            ValueError,
            r"\['synchronous'\] is 1, which SQLite does not accept\. Use one of"
            r" 'OFF', 'NORMAL', 'FULL', 'EXTRA'",
        ),
        (
            {"sqlite_pragmas": {"busy_timeout": "5s"}},
            ValueError,
            r"\['busy_timeout'\] is '5s', not a number of milliseconds",
        ),
        (
            {"sqlite_pragmas": {"busy_timeout": -1}},
            ValueError,
            r"\['busy_timeout'\] is -1, not a number of milliseconds",
        ),
        (
            {"sqlite_pragmas": {"foreign_keys": "yes"}},
            ValueError,
            r"\['foreign_keys'\] is 'yes'\. Use True or False",
        ),
    ],
)
def test_bad_engine_options_fail_init_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    entry: dict[str, t.Any],
    error: type[Exception],
    message: str,
) -> None:
    """A bad begin mode or pragma is refused in init_app, naming the option
    and the accepted values; the app is not set up.
    """
    app = make_app(init=False, UOW_ENGINES=engine_entry(db_url, **entry))
    with pytest.raises(error, match=message):
        uow.init_app(app)
    assert "uow" not in app.extensions


def test_bad_begin_argument_fails_the_call(uow: UnitOfWork) -> None:
    """An unknown sqlite_begin is refused when transaction() or transactional()
    is called, before anything begins.
    """
    with pytest.raises(ValueError, match=r"sqlite_begin='later' is not a SQLite"):
        uow.transaction(sqlite_begin="later")
    with pytest.raises(ValueError, match=r"sqlite_begin=1 is not a SQLite begin"):
        uow.transactional(sqlite_begin=1)  # type: ignore[call-overload]


def test_other_databases_ignore_the_sqlite_options(
    make_app: AppFactory, uow: UnitOfWork, db: Database, db_url: str
) -> None:
    """The SQLite options in an engine entry and sqlite_begin are accepted,
    and ignored, on other databases.
    """
    app = make_app(
        UOW_ENGINES=engine_entry(
            db_url, sqlite_begin="exclusive", sqlite_pragmas={"busy_timeout": 1}
        )
    )

    @app.post("/")
    @uow.transactional(sqlite_begin="deferred")
    def view() -> str:
        uow.session.add(Item(name="saved"))
        return "ok"

    assert app.test_client().post("/").status_code == 200
    with app.app_context(), uow.transaction(sqlite_begin="exclusive") as session:
        session.add(Item(name="also saved"))
    assert db.names() == ["also saved", "saved"]
