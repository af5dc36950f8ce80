"""The bridge from SQLAlchemy session events to flask_uow: signals, change sets
and on_commit bookkeeping. Listeners are attached to each app's own
sessionmaker, once, in ``init_app``.
"""

from __future__ import annotations

import functools
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.orm as orm
from blinker import NamedSignal
from flask import Flask

from . import signals
from ._aborted import check_committable
from ._changes import ChangeSet
from ._changes import record_flush
from ._changes import record_statement
from ._state import app_context

if t.TYPE_CHECKING:
    from ._unit import Unit


def listen(factory: orm.sessionmaker[orm.Session]) -> None:
    """Attach the listeners to an app's sessionmaker. Those that only record
    change sets are attached once a receiver of a commit signal is connected
    (see :func:`_receiver_connected`): until then no flush or statement pays
    for them.
    """
    sa.event.listen(factory, "after_begin", _after_begin)
    sa.event.listen(factory, "before_commit", _before_commit)
    sa.event.listen(factory, "after_commit", _after_commit)
    sa.event.listen(factory, "after_rollback", _after_rollback)
    sa.event.listen(factory, "after_soft_rollback", _after_soft_rollback)
    sa.event.listen(factory, "after_transaction_end", _after_transaction_end)
    _factories.add(factory)
    if signals.before_commit.receivers or signals.after_commit.receivers:
        _record_changes(factory)


#: Every app's sessionmaker, for change recording to attach to later.
_factories: weakref.WeakSet[orm.sessionmaker[orm.Session]] = weakref.WeakSet()
_recording: weakref.WeakSet[orm.sessionmaker[orm.Session]] = weakref.WeakSet()


def _record_changes(factory: orm.sessionmaker[orm.Session]) -> None:
    if factory not in _recording:
        _recording.add(factory)
        sa.event.listen(factory, "after_flush", _after_flush)
        sa.event.listen(factory, "do_orm_execute", _do_orm_execute)


def _receiver_connected(signal: t.Any, **extra: t.Any) -> None:
    """A commit signal got a receiver: record change sets from now on."""
    for factory in list(_factories):
        _record_changes(factory)


signals.before_commit.receiver_connected.connect(_receiver_connected)
signals.after_commit.receiver_connected.connect(_receiver_connected)


def send_quietly(app: Flask, signal: NamedSignal, **payload: t.Any) -> None:
    """Send *signal* from *app* to each receiver in turn; one that raises is
    logged and the others still receive it.
    """
    for receiver in signal.receivers_for(app):
        try:
            app.ensure_sync(receiver)(app, **payload)
        except Exception:
            app.logger.exception(
                "flask_uow: a receiver of the %r signal failed.", signal.name
            )


def _unit(session: orm.Session) -> Unit | None:
    # Only sessions of flask_uow's own sessionmakers reach these listeners.
    return session.uow_unit  # type: ignore[attr-defined,no-any-return]


def _app() -> Flask | None:
    """The current app; ``None`` outside an application context (a streamed
    body without ``stream_with_context``, say), where nothing is signalled.
    """
    ctx = app_context()
    return None if ctx is None else ctx.app


def has_receivers(signal: NamedSignal, app: Flask | None) -> bool:
    """Whether a receiver of *signal* listens to *app*. Free when the signal
    has no receiver at all, the common case, since it is asked at every
    flush and statement.
    """
    if not signal.receivers or app is None:
        return False
    return any(True for _ in signal.receivers_for(app))


def _collecting(app: Flask | None) -> bool:
    """Whether changes must be recorded: a commit signal listens to *app*."""
    return has_receivers(signals.before_commit, app) or has_receivers(
        signals.after_commit, app
    )


def _level(unit: Unit, transaction: orm.SessionTransaction) -> ChangeSet:
    changes = unit.change_sets.get(transaction)
    if changes is None:
        changes = unit.change_sets[transaction] = ChangeSet()
    return changes


def _current_level(unit: Unit, session: orm.Session) -> ChangeSet:
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # pragma: no cover - flushes run in a transaction
        raise RuntimeError("flask_uow: a flush ran outside of a transaction.")
    return _level(unit, transaction)


def _after_begin(
    session: orm.Session,
    transaction: orm.SessionTransaction,
    connection: sa.Connection,
) -> None:
    unit = _unit(session)
    if unit is None:
        return
    if transaction.nested:
        # Remembered so that a savepoint whose RELEASE failed can still be
        # rolled back (see _transaction.TransactionBlock).
        unit.savepoints.setdefault(transaction, []).append(
            (connection, savepoint_name(connection))
        )
        return
    unit.connections.append(connection)
    if signals.after_begin.receivers and (app := _app()) is not None:
        describe = getattr(session, "uow_describe", None)
        name, role = (None, "primary") if describe is None else describe(connection)
        send_quietly(
            app,
            signals.after_begin,
            session=session,
            connection=connection,
            engine=name,
            role=role,
        )


def _after_flush(session: orm.Session, flush_context: t.Any) -> None:
    unit = _unit(session)
    if unit is not None and _collecting(_app()):
        record_flush(_current_level(unit, session), session)


def _do_orm_execute(execute_state: orm.ORMExecuteState) -> t.Any:
    if not (
        execute_state.is_insert or execute_state.is_update or execute_state.is_delete
    ):
        return None
    unit = _unit(execute_state.session)
    if unit is None or not _collecting(_app()):
        return None
    # Run the statement now, so that only a statement that succeeded is recorded.
    result = execute_state.invoke_statement()
    record_statement(_current_level(unit, execute_state.session), execute_state)
    return result


def _root_changes(unit: Unit, session: orm.Session) -> list[t.Any]:
    root = session.get_transaction()
    changes = unit.change_sets.get(root) if root is not None else None
    return [] if changes is None else changes.changes()


def _before_commit(session: orm.Session) -> None:
    unit = _unit(session)
    if unit is None or session.in_nested_transaction():
        return
    # Every outermost commit passes here: the end of a request, of a block,
    # and an explicit session.commit(). Never COMMIT what the server aborted.
    check_committable(unit.connections)
    if not signals.before_commit.receivers:
        return
    app = _app()
    if app is None or not has_receivers(signals.before_commit, app):
        return
    session.flush()  # The final flush, so that the changes are complete.
    if unit.connections:
        changes = _root_changes(unit, session)
        # Not quietly: a receiver that raises aborts the commit.
        signals.before_commit.send(
            app, _async_wrapper=app.ensure_sync, session=session, changes=changes
        )
        # A receiver may have caught an error of its own statement.
        check_committable(unit.connections)


def _after_commit(session: orm.Session) -> None:
    unit = _unit(session)
    if unit is None:
        return
    if session.in_nested_transaction():
        # A savepoint was released: its changes become its parent's.
        released = session.get_nested_transaction()
        if released is not None and released.parent is not None:
            changes = unit.change_sets.pop(released, None)
            if changes is not None:
                _level(unit, released.parent).absorb(changes)
        return
    if (
        unit.connections
        and signals.after_commit.receivers
        and (app := _app()) is not None
        and has_receivers(signals.after_commit, app)
    ):
        notice = functools.partial(
            send_quietly,
            app,
            signals.after_commit,
            session=session,
            changes=_root_changes(unit, session),
        )
        unit.ready.append(notice)
    # The session cannot run SQL until this commit returns, so the signal and
    # the callbacks are run by flask_uow once it does (see run_callbacks).
    if unit.pending:
        unit.ready.extend(unit.pending)
        unit.pending.clear()


def _after_rollback(session: orm.Session) -> None:
    unit = _unit(session)
    if (
        unit is None
        or not unit.connections
        or not signals.after_rollback.receivers
        or session.in_nested_transaction()
    ):
        return
    app = _app()
    if app is not None and has_receivers(signals.after_rollback, app):
        send_quietly(app, signals.after_rollback, session=session)


def _after_soft_rollback(
    session: orm.Session, previous_transaction: orm.SessionTransaction
) -> None:
    unit = _unit(session)
    if unit is not None and previous_transaction.parent is None:
        unit.pending.clear()


def _after_transaction_end(
    session: orm.Session, transaction: orm.SessionTransaction
) -> None:
    unit = _unit(session)
    if unit is None:
        return
    # A released savepoint's changes were moved to its parent already; what
    # is left belongs to a rolled back savepoint, or to the ended transaction.
    if unit.change_sets:
        unit.change_sets.pop(transaction, None)
    if unit.savepoints:
        unit.savepoints.pop(transaction, None)
    if transaction.parent is None:
        unit.connections.clear()


def savepoint_name(connection: sa.Connection) -> str:
    """The name of the SAVEPOINT just begun on *connection*.

    SQLAlchemy has no public way to tell it; it is the private ``_savepoint``
    of the connection's nested transaction, read in this one place.
    ``tests/test_flask_contract.py`` fails loudly if SQLAlchemy changes it.
    """
    nested = connection.get_nested_transaction()
    return t.cast(str, nested._savepoint)  # type: ignore[union-attr]
