"""Read-your-writes: where a client's last writes landed, carried in a signed
cookie, and the database positions it is compared with.

PostgreSQL reports positions in its write-ahead log (WAL): the primary's
``pg_current_wal_lsn()`` after a commit, a replica's
``pg_last_wal_replay_lsn()``. Other databases have no such position; for them
the cookie holds the end of a time window after the write instead.
"""

from __future__ import annotations

import collections.abc as cabc
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask import Request
from flask import Response
from itsdangerous import BadSignature
from itsdangerous import URLSafeSerializer

_SALT = "flask-uow.read-your-writes"

#: One query that tells how far a replica has replayed, and how old that is.
#: The lag is 0 while the replica streams and has replayed all it received;
#: otherwise it is the age of the last transaction it replayed. A server that
#: is not in recovery (a replica URL that names a primary) is never behind.
REPLICA_STATUS = """\
SELECT CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()
            ELSE coalesce(pg_last_wal_replay_lsn(), '0/0') END::text,
       CASE WHEN NOT pg_is_in_recovery() THEN 0
            WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
                 AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN 0
            ELSE extract(epoch FROM clock_timestamp()
                                    - pg_last_xact_replay_timestamp())
       END::float"""

_STATEMENT_KEY = "flask_uow.wrote"
#: First words of textual statements that change no data: reads, and the
#: statements that set up or end transactions.
_READING_WORDS = frozenset(
    {"SELECT", "SHOW", "EXPLAIN", "VALUES", "TABLE", "FETCH", "SET", "BEGIN"}
    | {"START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}
)


def parse_lsn(text: str) -> int:
    """A WAL position as an int; ``'16/B374D848'`` is ``0x16B374D848``."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def has_wal(engine: sa.Engine) -> bool:
    """Whether the database of *engine* reports WAL positions."""
    return engine.dialect.name == "postgresql"


def replica_status(engine: sa.Engine) -> tuple[int, float | None]:
    """Ask a PostgreSQL replica for its replayed position and its lag in
    seconds (``None`` when unknown), in one autocommit query.
    """
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        lsn, lag = conn.exec_driver_sql(REPLICA_STATUS).one()
    return parse_lsn(lsn), lag


def current_position(engine: sa.Engine) -> int:
    """The primary's WAL position now, in one autocommit query."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        lsn = conn.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar_one()
    return parse_lsn(lsn)


def watch_writes(engine: sa.Engine) -> None:
    """Note on each connection of a primary whether its transaction wrote.

    Compiled SELECT statements (every ORM and Core query) read; compiled
    INSERT, UPDATE and DELETE write; a textual statement writes unless it
    starts with a reading keyword such as SELECT. The note is cleared when
    a transaction begins.
    """

    @sa.event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        conn.info.pop(_STATEMENT_KEY, None)

    @sa.event.listens_for(engine, "after_cursor_execute")
    def after_cursor_execute(
        conn: sa.Connection,
        cursor: t.Any,
        statement: str,
        parameters: t.Any,
        context: t.Any,
        executemany: bool,
    ) -> None:
        if context is None or context.isinsert or context.isupdate:
            conn.info[_STATEMENT_KEY] = True
        elif context.isdelete or context.isddl:
            conn.info[_STATEMENT_KEY] = True
        elif context.compiled is None or context.is_text:
            word = statement.lstrip(" \t\r\n(").split(None, 1)[:1]
            if not word or word[0].upper() not in _READING_WORDS:
                conn.info[_STATEMENT_KEY] = True


def wrote(connection: sa.Connection) -> bool:
    """Whether the transaction that just ended on *connection* wrote."""
    return bool(connection.info.pop(_STATEMENT_KEY, False))


class Token:
    """The positions a client carries: by engine name, a WAL position the
    replicas must have replayed, or the time until which reads use the
    primary.
    """

    __slots__ = ("lsn", "until", "changed")

    def __init__(
        self, lsn: dict[str, int] | None = None, until: dict[str, float] | None = None
    ) -> None:
        self.lsn = lsn or {}
        self.until = until or {}
        #: The cookie must be sent again (or deleted).
        self.changed = False

    def needs(self, name: str) -> tuple[int | None, bool]:
        """The position replicas of *name* must have replayed, and whether a
        time window still sends reads of *name* to the primary.
        """
        until = self.until.get(name)
        if until is not None and until <= time.time():
            self.drop(name)
            until = None
        return self.lsn.get(name), until is not None

    def drop(self, name: str) -> None:
        if self.lsn.pop(name, None) is not None:
            self.changed = True
        if self.until.pop(name, None) is not None:
            self.changed = True

    def wrote(self, name: str, lsn: int | None, window: float) -> None:
        """Record a commit that wrote on *name*: at *lsn*, or without a
        position, for the next *window* seconds.
        """
        if lsn is not None:
            self.lsn[name] = max(lsn, self.lsn.get(name, 0))
        else:
            self.until[name] = time.time() + window
        self.changed = True

    def dump(self) -> dict[str, t.Any]:
        return {"lsn": self.lsn, "until": self.until}


class Cookie:
    """Reads and writes the signed read-your-writes cookie. It keeps no app:
    the app's state holds it, and the state must not keep the app alive.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _serializer(self, app: Flask) -> URLSafeSerializer:
        keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key]
        return URLSafeSerializer(keys, salt=_SALT)

    def load(self, app: Flask, request: Request) -> Token:
        """The request's token; an empty one if it has none, or if its
        signature does not verify (a key that changed, or tampering).
        """
        value = request.cookies.get(self.name)
        if value is None:
            return Token()
        try:
            data = self._serializer(app).loads(value)
            lsn = _positions(data["lsn"], int)
            token = Token(lsn, _positions(data["until"], float))
        except (BadSignature, KeyError, TypeError, ValueError):
            token = Token()
            token.changed = True  # Replace the unreadable cookie.
        return token

    def save(self, app: Flask, token: Token, response: Response) -> None:
        if not token.changed:
            return
        interface = app.session_interface
        options: dict[str, t.Any] = {
            "domain": interface.get_cookie_domain(app),
            "path": interface.get_cookie_path(app),
            "secure": interface.get_cookie_secure(app),
            "samesite": interface.get_cookie_samesite(app),
            "httponly": True,
        }
        if not token.lsn and not token.until:
            response.delete_cookie(self.name, **options)
        else:
            value = self._serializer(app).dumps(token.dump())
            response.set_cookie(self.name, value, **options)
        response.vary.add("Cookie")


def _positions(value: t.Any, kind: type[t.Any]) -> dict[str, t.Any]:
    if not isinstance(value, cabc.Mapping):
        raise TypeError("positions")
    return {str(name): kind(position) for name, position in value.items()}
