"""Requests handled inside an application context that is already pushed: a
test body that reads through ``uow.session``, makes requests with the test
client, and reads again.

The test body's unit (kept in the pushed context's ``g``) and each request's
unit have their own sessions. Left alone, the body's session would keep the
transaction of its first read open across the requests: on a SQLite file it
keeps reading its old snapshot, its objects keep their old values on every
backend, and on an in-memory database, whose one connection every session
shares, the request cannot even begin ("cannot start a transaction within a
transaction").

So when a request's unit makes its session inside a context whose unit holds
an open transaction, that transaction is ended first, provided it holds no
changes: it only read, so rolling it back loses nothing, expires the body's
objects, and the body's next read begins a new transaction that sees what the
request committed. A body transaction that holds changes is left alone (it is
the test's to commit); on a single shared connection that cannot work, and
the request fails with an error that says so.

In production every request pushes an application context of its own, whose
``g`` holds no unit: the check costs the request one hook call and two
lookups, once, when it makes its session.
"""

from __future__ import annotations

import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm

from ._state import app_context

if t.TYPE_CHECKING:
    from ._state import State
    from ._unit import Unit

#: Text statements taken for reads; any other text statement may write.
_READS = re.compile(r"\s*(SELECT|WITH|PRAGMA|SHOW|EXPLAIN|VALUES)\b", re.IGNORECASE)


def install(state: State) -> None:
    """Register the ``opened`` hook on the app's state."""
    key = state.key
    single = any(isinstance(e.pool, sa.StaticPool) for e in state.engines.values())

    def opened(unit: Unit, session: orm.Session) -> None:
        if unit.environ is None:
            _watch_writes(session)
            return
        ctx = app_context()
        if ctx is None:  # pragma: no cover - a request has its context
            return
        body = ctx.g.__dict__.get(key)
        if body is not None:
            _end_read_transaction(body, single)

    state.opened.append(opened)


def _end_read_transaction(body: Unit, single: bool) -> None:
    """Roll back the transaction of the context unit *body* if it only read."""
    session = body.session
    if session is None or not session.in_transaction():
        return
    if holds_changes(body, session):
        if single:
            raise RuntimeError(
                "A request began while the session of the application context"
                " around it holds uncommitted changes, on an in-memory SQLite"
                " database whose one connection they share. Commit them"
                " ('uow.session.commit()') or end them ('uow.session.remove()')"
                " before making the request, or use a SQLite file."
            )
        return
    session.rollback()


def holds_changes(unit: Unit, session: orm.Session) -> bool:
    """Whether ending *session*'s transaction could lose work: objects added,
    changed or deleted, flushed or not; a statement that may have written; an
    open block or savepoint; on_commit callbacks waiting for the commit.
    """
    written = session.info.get(_WROTE)
    return bool(
        unit.frames
        or unit.pending
        or session.in_nested_transaction()
        or (written is not None and written is session.get_transaction())
        or session.new
        or session.deleted
        or session.dirty
    )


#: A key of a context unit's session ``info``: the transaction that wrote.
_WROTE = "flask_uow.wrote"


def _watch_writes(session: orm.Session) -> None:
    """Note in *session*'s ``info`` each transaction in which it flushed or
    ran a statement that may write.
    """

    def wrote(*args: t.Any) -> None:
        session.info[_WROTE] = session.get_transaction()

    def executed(state: orm.ORMExecuteState) -> None:
        statement = state.statement
        if statement.is_select:
            return
        if isinstance(statement, sa.TextClause) and _READS.match(statement.text):
            return
        wrote()

    sa.event.listen(session, "after_flush", wrote)
    sa.event.listen(session, "do_orm_execute", executed)
