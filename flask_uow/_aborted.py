"""The outcome we report is the outcome the server has: a transaction that the
database already aborted is never sent a COMMIT as if it could succeed.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy as sa

#: libpq's ``PQTRANS_INERROR``: psycopg 3's ``TransactionStatus.INERROR`` and
#: psycopg2's ``TRANSACTION_STATUS_INERROR`` both have this value.
_PQTRANS_INERROR = 3
#: libpq's ``PQTRANS_UNKNOWN``: the connection is bad or closed.
_PQTRANS_UNKNOWN = 4

_CAUGHT = (
    "An earlier statement of this transaction failed and its error was caught, "
    "so the database aborted the transaction and nothing was committed (a COMMIT "
    "would have been turned into a ROLLBACK). Let the statement's error "
    "propagate, or run the statement in a nested 'uow.transaction()' block, so "
    "that its failure rolls back only that block's savepoint."
)
_SQLITE = (
    "SQLite rolled this transaction back by itself after an error that was "
    "caught, so nothing was committed. Let the statement's error propagate "
    "instead of catching it, and run the work again."
)
_LOST = (
    "The connection to the database was lost during this transaction, so "
    "nothing was committed. Run the work again; "
    "'@uow.transactional(retries=...)' does so by itself."
)
_SAVEPOINT = (
    "A nested 'uow.transaction()' block failed and its savepoint could not be "
    "rolled back, so its work cannot be told apart from this transaction's: "
    "nothing was committed. The error that stopped the rollback is this "
    "error's cause; run the work again."
)


class TransactionAbortedError(RuntimeError):
    """Raised instead of committing a transaction that cannot commit: an
    earlier statement failed and its error was caught (PostgreSQL aborts the
    whole transaction then), the connection was lost, or a nested block's
    savepoint could not be rolled back. Nothing was committed; the transaction
    is rolled back.

    At the end of a request it reaches the app's error handlers like any
    commit error; register one with ``@app.errorhandler(TransactionAbortedError)``.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        #: The connection was lost: the transient kind, which a transaction
        #: with ``retries`` runs again.
        self.connection_lost = connection_lost


def check_committable(connections: cabc.Iterable[sa.Connection]) -> None:
    """Raise :class:`TransactionAbortedError` if the server already ended or
    aborted the transaction on one of *connections*, as its driver reports.
    """
    for connection in connections:
        if connection.invalidated:
            raise TransactionAbortedError(_LOST, connection_lost=True)
        try:
            reason = _aborted_reason(connection.connection.dbapi_connection)
        except Exception as e:
            # The driver refuses to tell: its connection was closed under the
            # session (sqlite3's "Cannot operate on a closed database",
            # psycopg2's "connection already closed"). A lost connection:
            # invalidated, so that the rollback sends nothing on it and the
            # pool opens a new one for the next transaction.
            connection.invalidate(e)
            raise TransactionAbortedError(_LOST, connection_lost=True) from e
        if reason is _LOST:
            connection.invalidate()
            raise TransactionAbortedError(_LOST, connection_lost=True)
        if reason is not None:
            raise TransactionAbortedError(reason)


def savepoint_failed(*, connection_lost: bool) -> TransactionAbortedError:
    """The error that ends a transaction one of whose savepoints could not be
    rolled back; raise it ``from`` the error that stopped the rollback.
    """
    return TransactionAbortedError(_SAVEPOINT, connection_lost=connection_lost)


def _aborted_reason(dbapi_connection: t.Any) -> str | None:
    pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
    if pgconn is not None:
        status = pgconn.transaction_status
    elif hasattr(dbapi_connection, "get_transaction_status"):  # psycopg2
        status = dbapi_connection.get_transaction_status()
    else:
        # sqlite3 with its own transaction handling off (isolation_level None):
        # only flask_uow's BEGIN opens a transaction there, so "not in a
        # transaction" means SQLite rolled back on its own (SQLITE_FULL, say).
        if getattr(dbapi_connection, "isolation_level", "") is not None:
            return None
        in_transaction = getattr(dbapi_connection, "in_transaction", None)
        return _SQLITE if in_transaction is False else None
    if status == _PQTRANS_UNKNOWN or getattr(dbapi_connection, "closed", False):
        return _LOST
    return _CAUGHT if status == _PQTRANS_INERROR else None
