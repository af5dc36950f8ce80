"""SQLite that holds up under concurrent writes: how each transaction begins,
and the pragmas a file database gets when a connection opens.

A transaction that begins with a plain (deferred) ``BEGIN``, reads, and then
writes must upgrade its read lock to the write lock; when another connection
writes at the same time, SQLite cannot let it wait without risking a deadlock,
so it fails at once with "database is locked", whatever the busy timeout.
``BEGIN IMMEDIATE`` takes the write lock when the transaction begins, waiting
for it up to the busy timeout, and cannot deadlock later.

Each SQLite engine gets listeners that emit a plain ``BEGIN`` whenever
SQLAlchemy begins a transaction, and set the pragmas. A session whose
transaction must take the write lock at once (see :class:`BeginModes`) turns
that empty, lock-free transaction into a ``BEGIN IMMEDIATE`` one as soon as it
began, before any statement: ``ROLLBACK`` then ``BEGIN IMMEDIATE`` on the
driver. The engine itself is the same for every mode, so no statement pays for
the choice.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import sys
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm

if t.TYPE_CHECKING:
    from ._unit import Unit

#: The begin modes a transaction may ask for, as SQLite names them.
BEGIN_MODES = ("deferred", "immediate", "exclusive")
#: HTTP methods that do not change anything (RFC 9110): their units only read.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_STATEMENTS = {
    "deferred": "BEGIN",
    "immediate": "BEGIN IMMEDIATE",
    "exclusive": "BEGIN EXCLUSIVE",
}
#: The pragmas an engine entry may set, and the values each accepts.
_CHOICES = {
    "journal_mode": ("DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"),
    "synchronous": ("OFF", "NORMAL", "FULL", "EXTRA"),
}
PRAGMAS = ("busy_timeout", "journal_mode", "synchronous", "foreign_keys")


def check_begin_mode(value: t.Any, name: str = "sqlite_begin") -> str | None:
    """Validate and normalize a begin mode: ``None`` or one of
    :data:`BEGIN_MODES`, in any case.
    """
    if value is None:
        return None
    mode = value.lower() if isinstance(value, str) else None
    if mode not in BEGIN_MODES:
        raise ValueError(
            f"{name}={value!r} is not a SQLite begin mode. Use 'deferred',"
            " 'immediate' or 'exclusive', or None for the engine's default."
        )
    return mode


class Settings(t.NamedTuple):
    """The flask_uow options of one ``UOW_ENGINES`` entry."""

    #: How a transaction that is going to write begins.
    begin: str
    #: The pragmas to set as ``(name, SQL value)``, in order.
    pragmas: list[tuple[str, str]]


def pop_settings(key: str, options: dict[str, t.Any], url: sa.URL) -> Settings:
    """Take ``sqlite_begin`` and ``sqlite_pragmas`` out of the ``create_engine``
    arguments of the entry *key* and check them; other backends ignore them.
    """
    begin = check_begin_mode(
        options.pop("sqlite_begin", "immediate"), f"{key}['sqlite_begin']"
    )
    given = options.pop("sqlite_pragmas", {})
    if not isinstance(given, cabc.Mapping):
        raise TypeError(
            f"{key}['sqlite_pragmas'] must be a dict that maps pragma names to"
            f" values, not {type(given).__name__!r}. For example"
            " {'busy_timeout': 10000}."
        )
    unknown = [name for name in given if name not in PRAGMAS]
    if unknown:
        raise ValueError(
            f"{key}['sqlite_pragmas'] has the unknown pragma {unknown[0]!r}. Use"
            f" {', '.join(repr(p) for p in PRAGMAS)}; set other pragmas in a"
            " 'connect' event listener on the engine."
        )
    database = url.database
    in_memory = (
        not database or database == ":memory:" or url.query.get("mode") == "memory"
    )
    wanted: dict[str, t.Any] = {"busy_timeout": None, "foreign_keys": True}
    if not in_memory:  # An in-memory database has no journal to configure.
        wanted["journal_mode"] = "WAL"
        if str(given.get("journal_mode", "WAL")).upper() == "WAL":
            wanted["synchronous"] = "NORMAL"  # Durable enough under WAL.
    wanted.update(given)
    pragmas = []
    for name in PRAGMAS:
        value = wanted.get(name)
        if value is not None:
            pragmas.append((name, _pragma_value(key, name, value)))
    return Settings(begin or "immediate", pragmas)


def _pragma_value(key: str, name: str, value: t.Any) -> str:
    where = f"{key}['sqlite_pragmas'][{name!r}]"
    if name == "busy_timeout":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"{where} is {value!r}, not a number of milliseconds. Use an int,"
                " 0 or more, for example 5000, or None for the driver's timeout."
            )
        return str(value)
    if name == "foreign_keys":
        if not isinstance(value, bool):
            raise ValueError(
                f"{where} is {value!r}. Use True or False, or None to leave"
                " SQLite's default."
            )
        return "ON" if value else "OFF"
    choices = _CHOICES[name]
    if not isinstance(value, str) or value.upper() not in choices:
        raise ValueError(
            f"{where} is {value!r}, which SQLite does not accept. Use one of"
            f" {', '.join(repr(c) for c in choices)}, or None to leave SQLite's"
            " default."
        )
    return value.upper()


def is_configurable(engine: sa.Engine) -> bool:
    """Whether flask_uow emits BEGIN and pragmas for *engine*: SQLite on the
    standard ``sqlite3`` driver.
    """
    return engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite"


#: The ``BEGIN`` statement of each begin mode of each configured engine,
#: ``"write"`` being the engine's mode for transactions that will write.
_engine_statements: weakref.WeakKeyDictionary[sa.Engine, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


def configure(engine: sa.Engine, settings: Settings) -> None:
    """Make SQLite transactions begin when SQLAlchemy begins them, and set
    the pragmas on each new connection.

    By default the ``sqlite3`` module emits BEGIN only before a data-changing
    statement, so reads run outside the transaction, and a SAVEPOINT taken after
    a read starts the real transaction; releasing it then commits everything.
    Turning the module's own handling off and emitting BEGIN from SQLAlchemy's
    ``begin`` event gives SQLite the same transaction boundaries as PostgreSQL.
    """
    _engine_statements[engine] = dict(_STATEMENTS, write=_STATEMENTS[settings.begin])
    pragmas = [f"PRAGMA {name} = {value}" for name, value in settings.pragmas]

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection: t.Any, record: t.Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in pragmas:
            dbapi_connection.execute(pragma).close()

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        # Straight to the driver: through exec_driver_sql, this one statement
        # cost more than the whole query of a small read request.
        _run(connection, ("BEGIN",))


def _run(connection: sa.Connection, statements: tuple[str, ...]) -> None:
    """Run *statements* on the driver connection of *connection*; errors
    ("database is locked") are wrapped as SQLAlchemy would wrap them.
    """
    dbapi_connection = connection.connection.dbapi_connection
    dialect = connection.dialect
    for statement in statements:
        try:
            dbapi_connection.execute(statement)  # type: ignore[union-attr]
        except dialect.loaded_dbapi.Error as e:
            raise sa_exc.DBAPIError.instance(
                statement, None, e, dialect.loaded_dbapi.Error, dialect=dialect
            ) from e


class BeginModes:
    """How the transactions of one app's sessions begin on its SQLite
    engines. A session holds the mode of its next transaction in
    ``uow_begin_mode`` (``None``: deferred): ``"write"`` (each engine's mode
    for transactions that will write), or a mode of :data:`BEGIN_MODES`.
    """

    def __init__(self, engines: cabc.Iterable[sa.Engine]) -> None:
        self.statements = {e: _engine_statements[e] for e in engines}

    def opened(self, unit: Unit, session: orm.Session) -> None:
        """The ``opened`` hook of the app's state: a new unit's session begins
        write transactions when the unit is a request's whose method is not
        safe, deferred ones otherwise (safe requests, CLI commands, jobs), which
        may only read. A session joined to an outer transaction (test
        isolation) is left alone.
        """
        if isinstance(session.bind, sa.Connection):
            return
        session.uow_begin_modes = self  # type: ignore[attr-defined]
        environ = unit.environ
        if environ is not None and environ["REQUEST_METHOD"] not in SAFE_METHODS:
            session.uow_begin_mode = "write"  # type: ignore[attr-defined]

    def after_begin(
        self,
        session: orm.Session,
        transaction: orm.SessionTransaction,
        connection: sa.Connection,
    ) -> None:
        """Session event: a transaction began on *connection* with a plain
        ``BEGIN``; make it the session's mode before it runs anything.
        """
        mode: str | None = session.uow_begin_mode  # type: ignore[attr-defined]
        if mode is None or transaction.nested:
            return
        statements = self.statements.get(connection.engine)
        if statements is not None:
            statement = statements[mode]
            if statement != "BEGIN":
                _run(connection, ("ROLLBACK", statement))


def begin_modes(engines: cabc.Iterable[sa.Engine]) -> BeginModes | None:
    """The :class:`BeginModes` of an app's engines; ``None`` without SQLite."""
    sqlite = [engine for engine in engines if engine in _engine_statements]
    return BeginModes(sqlite) if sqlite else None


def warn_under_gevent(
    logger: logging.Logger, engines: cabc.Mapping[str, sa.Engine]
) -> None:
    """Log a warning when gevent's monkey patching is active and an engine is
    SQLite: the two do not mix.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_anything_patched():
        return
    names = [name for name, e in engines.items() if e.dialect.name == "sqlite"]
    if names:
        logger.warning(
            "flask_uow: gevent's monkey patching is active, but %s %s a SQLite"
            " database. SQLite and gevent do not mix: the sqlite3 driver waits"
            " for a locked database inside C code that gevent cannot switch"
            " away from, so one request waiting for the write lock stops every"
            " other request of the worker, and they fail with 'database is"
            " locked' or time out. Use sync or gthread workers with SQLite, or"
            " PostgreSQL with psycopg 3 under gevent.",
            ", ".join(f"UOW_ENGINES[{name!r}]" for name in names),
            "is" if len(names) == 1 else "are",
        )
