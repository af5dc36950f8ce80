"""Which database errors are worth retrying, and how long to wait between tries."""

from __future__ import annotations

import collections.abc as cabc
import random

import sqlalchemy.exc as sa_exc

from ._aborted import TransactionAbortedError

#: MySQL and MariaDB: ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK.
_MYSQL_TRANSIENT = {1205, 1213}
#: SQLite primary result codes SQLITE_BUSY and SQLITE_LOCKED.
_SQLITE_TRANSIENT = {5, 6}
#: PostgreSQL: the server process ended (admin or crash shutdown, restarting).
_PG_SERVER_GONE = {"57P01", "57P02", "57P03"}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error from psycopg 3 or psycopg2, wrapped
    by SQLAlchemy or not.
    """
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient_error(exc: BaseException) -> bool:
    """The default classifier of errors that a transaction may retry: errors
    that say "try again", not "this is wrong".

    It returns ``True`` for a :class:`sqlalchemy.exc.DBAPIError` that wraps

    -   a PostgreSQL error of SQLSTATE class 40, transaction rollback
        (``40001`` serialization failure, ``40P01`` deadlock detected), from
        psycopg 3 (``sqlstate``) or psycopg2 (``pgcode``);
    -   a MySQL or MariaDB error 1213 (deadlock) or 1205 (lock wait timeout);
    -   SQLite's "database is locked" or "database table is locked";
    -   or a lost connection: one SQLAlchemy invalidated, a PostgreSQL error of
        class 08 (connection exception), or 57P01 to 57P03 (the server process
        was terminated). A transaction is never retried when the connection was
        lost during its COMMIT, whatever the classifier says, since the COMMIT
        may have succeeded.

    A lost connection is recognised wherever it surfaces: in *exc* itself, in
    its chain of causes (``raise ... from``) and contexts, or as a
    :class:`~flask_uow.TransactionAbortedError` that says the connection was
    lost (raised when a caught error had hidden the loss until the commit).

    Replace it with :meth:`~flask_uow.UnitOfWork.retry_classifier`.

    :param exc: The exception raised by the transaction or its commit.

    .. versionadded:: 0.1
    """
    if lost_connection(exc):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    orig = exc.orig
    code = sqlstate(exc)
    if code is not None:
        return code.startswith("40")
    errorcode = getattr(orig, "sqlite_errorcode", None)
    if isinstance(errorcode, int):
        return errorcode & 0xFF in _SQLITE_TRANSIENT
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0] in _MYSQL_TRANSIENT
    message = str(orig)
    return "database is locked" in message or "database table is locked" in message


def is_disconnect(exc: BaseException) -> bool:
    """Whether *exc* says the connection to the database was lost. Raised by a
    COMMIT, it leaves the outcome unknown: the server may have committed.
    """
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    return code is not None and (code.startswith("08") or code in _PG_SERVER_GONE)


def lost_connection(exc: BaseException) -> bool:
    """Whether *exc*, or an exception in its chain of causes and contexts,
    says that the connection to the database was lost.
    """
    return any(
        is_disconnect(link)
        or (isinstance(link, TransactionAbortedError) and link.connection_lost)
        for link in _chain(exc)
    )


def _chain(exc: BaseException) -> cabc.Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def backoff(attempt: int, delay: float, max_delay: float) -> float:
    """Seconds to wait before retry number *attempt* (1 for the first retry):
    a random time up to ``delay * 2 ** (attempt - 1)``, capped at *max_delay*.
    """
    # Past 2 ** 64 the cap has long won; a larger power overflows a float.
    return random.uniform(0, min(max_delay, delay * 2 ** min(attempt - 1, 64)))
