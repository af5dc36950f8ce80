"""The hooks of read replicas: the session and engine events that refuse
writes in safe units, note where commits wrote, and the response hook that
hands the client its token.
"""

from __future__ import annotations

import collections.abc as cabc
import itertools
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import has_request_context
from flask import request
from flask import Response

from ._positions import current_position
from ._positions import watch_writes
from ._positions import wrote
from ._replicas import Replicas
from ._replicas import Route
from ._replicas import SAFE_METHODS
from ._replicas import WRITE_ON_REPLICA
from ._state import State


def install(app: Flask, state: State, replicas: Replicas) -> None:
    """Attach what read replicas need to an app: write checks, position
    tracking on the primaries, and the cookie on responses.

    Call it before the request hooks of :mod:`._lifecycle` are installed:
    Flask runs ``after_request`` functions in reverse order, so the cookie is
    set after the end-of-request commit.
    """
    for group in replicas.groups.values():
        watch_writes(group.primary)
        explain = _read_only_error(group.name)
        if group.wal:  # Safe units are READ ONLY on the primary too.
            sa.event.listen(group.primary, "handle_error", explain)
        for replica in group.replicas:
            sa.event.listen(replica.engine, "handle_error", explain)
    state.opened.append(replicas.opened)
    factory = state.factory
    sa.event.listen(factory, "after_begin", _after_begin)
    sa.event.listen(factory, "before_flush", _before_flush)
    sa.event.listen(factory, "do_orm_execute", _do_orm_execute)
    sa.event.listen(factory, "after_commit", _after_commit)
    sa.event.listen(factory, "after_transaction_end", _after_transaction_end)

    def save_token(response: Response) -> Response:
        unit = state.peek(app)
        session = None if unit is None else unit.session
        route = getattr(session, "uow_route", None)
        if route is None:
            return response
        # Read once every commit of the request is over, two-phase ones
        # included: the position then covers all of them.
        for name in sorted(route.committed):
            group = replicas.groups[state.engines[name]]
            lsn = _position(app, group.primary, name)
            route.token.wrote(name, lsn, replicas.window)
        route.committed.clear()
        if route._token is not None:
            replicas.cookie.save(app, route._token, response)
        return response

    app.after_request(save_token)


def _route(session: orm.Session) -> Route | None:
    return t.cast("Route | None", getattr(session, "uow_route", None))


def _after_begin(
    session: orm.Session, transaction: orm.SessionTransaction, conn: sa.Connection
) -> None:
    route = _route(session)
    if route is None:
        return
    group = route.replicas.group_of(conn.engine)
    if group is None:
        return
    route.open[conn] = group.name
    if route.safe and group.wal:
        # A safe unit that reads from the primary is read only too, so that
        # a view that writes fails whichever server serves it.
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def _before_flush(session: orm.Session, context: t.Any, instances: t.Any) -> None:
    route = _route(session)
    if route is None or not route.safe:
        return
    for obj in itertools.chain(session.new, session.dirty, session.deleted):
        route.check_write(session.get_bind(sa.inspect(obj).mapper))


def _do_orm_execute(state: orm.ORMExecuteState) -> None:
    route = _route(state.session)
    if route is None or not route.safe:
        return
    if state.is_insert or state.is_update or state.is_delete:
        route.check_write(
            state.session.get_bind(
                mapper=state.bind_mapper,
                clause=t.cast(sa.ClauseElement, state.statement),
            )
        )


def _after_commit(session: orm.Session) -> None:
    route = _route(session)
    if route is None or session.in_nested_transaction():
        return
    if not has_request_context():
        # A streamed body committing after its headers left: no cookie to set.
        return
    for conn, name in route.open.items():
        if wrote(conn):
            group = route.replicas.group_of(conn.engine)
            if group is not None and group.wal:
                route.committed.add(name)  # Its position is read at the end.
            else:
                route.token.wrote(name, None, route.replicas.window)


def _position(app: Flask, engine: sa.Engine, name: str) -> int | None:
    """The primary's position after the request's commits; ``None`` if it
    cannot be read (the commits stand: the client gets a time window instead).
    """
    try:
        return current_position(engine)
    except sa.exc.SQLAlchemyError as e:
        app.logger.warning(
            "flask_uow: the WAL position of %r after a commit could not be read"
            " (%s); the client reads from the primary for UOW_REPLICA_WINDOW"
            " seconds instead.",
            name,
            type(e).__name__,
        )
        return None


def _after_transaction_end(
    session: orm.Session, transaction: orm.SessionTransaction
) -> None:
    route = _route(session)
    if route is not None and transaction.parent is None:
        route.open.clear()


def _read_only_error(
    name: str,
) -> cabc.Callable[[sa.engine.ExceptionContext], BaseException | None]:
    """A ``handle_error`` listener that explains a write the server of a
    replica of *name* refused (a textual statement flask_uow could not see).
    """

    def handle_error(context: sa.engine.ExceptionContext) -> BaseException | None:
        error = context.original_exception
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if code != "25006" and "readonly database" not in str(error):
            return None
        if not has_request_context() or request.method not in SAFE_METHODS:
            return None
        return RuntimeError(
            WRITE_ON_REPLICA.format(
                method=request.method, path=request.path, engine=name
            )
        )

    return handle_error
