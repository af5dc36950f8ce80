"""The request lifecycle: commit on the response path, close when the request
is over.

How the layers fit (see ``docs/internals.rst`` for the diagram):

- leaves: errors, signals, config checks, records (``_unit``, ``_changes``,
  ``_query_info``, ``_positions``), retry classification;
- the core: ``_state`` (where units live, the seam), ``_bridge`` (session
  events to signals) and this module (the request hooks);
- capabilities above it (transaction blocks, recording, replicas, streaming,
  two-phase, SQLite begin modes, test isolation), each attaching itself
  through the seam of ``_state`` (``State.opened``, ``State.ended``,
  ``State.options``) or through Flask's and SQLAlchemy's own hooks, never by
  the core naming it;
- ``_extension`` (the public ``UnitOfWork``) on top.

A request costs what it uses. Per request flask_uow adds one wrapper call
around ``wsgi_app`` (which marks the request as handled and ends its unit),
one ``after_request`` function (the commit) and one ``teardown_appcontext``
function (units of application contexts). A request that never touches
``uow.session`` finds no unit in either and returns at once.
"""

from __future__ import annotations

import typing as t

import sqlalchemy.orm as orm
from flask import Flask
from flask import got_request_exception
from flask import Response

from ._bridge import listen
from ._state import app_context
from ._state import request_context
from ._state import State
from ._unit import Unit


def default_commit_veto(response: Response) -> bool:
    """The commit veto used unless one is registered with
    :meth:`~flask_uow.UnitOfWork.commit_veto`: veto (roll back) every response
    whose status is 400 or higher.

    :param response: The response the request is about to send.
    :return: ``True`` to roll back instead of committing.
    """
    return response.status_code >= 400


def install(app: Flask, state: State) -> None:
    """Register the request hooks that drive *state*'s units of work on *app*."""
    key = state.key
    original_wsgi_app = app.wsgi_app

    def wsgi_app(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        # The key in the environ marks the request as handled by this app:
        # from now on its unit lives here (see State.unit).
        environ[key] = None
        try:
            return original_wsgi_app(environ, start_response)
        finally:
            if key in environ:
                unit = environ[key]
                if unit is None:
                    del environ[key]
                elif unit.held is None:
                    end_request_unit(app, state, unit)

    def finish_request(response: Response) -> Response:
        ctx = request_context()
        if ctx is None:  # pragma: no cover - Flask runs these in a request
            return response
        environ = ctx.request.environ
        if key in environ:
            unit = environ[key]
        else:  # A request context pushed but not handled (see State.unit).
            unit = state.peek(app)
        if unit is None or unit.finished:
            return response
        unit.finished = True
        return end_of_request(app, state, unit, response)

    original_handle_user_exception = app.handle_user_exception

    def handle_user_exception(e: Exception) -> t.Any:
        # Flask calls this for every exception raised by a view or a
        # before_request hook, handled by an errorhandler or not; it is the one
        # place a handled exception can be noticed.
        state.unit(app).failed = True
        return original_handle_user_exception(e)

    def close_context_unit(exc: BaseException | None) -> None:
        ctx = app_context()
        if ctx is not None:
            store = ctx.g.__dict__
            if key in store:
                end_unit(app, state, store, store[key])

    original_ensure_sync = app.ensure_sync
    synchronous = frozenset({finish_request, close_context_unit})

    def ensure_sync(func: t.Any) -> t.Any:
        # Flask inspects every hook, on every call, for a coroutine function;
        # flask_uow's own hooks are known to be synchronous.
        if func in synchronous:
            return func
        return original_ensure_sync(func)

    listen(state.factory)
    app.ensure_sync = ensure_sync  # type: ignore[method-assign]
    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    app.after_request(finish_request)
    app.teardown_appcontext(close_context_unit)
    app.handle_user_exception = handle_user_exception  # type: ignore[method-assign]
    # Exceptions raised after the view (by an after_request hook, say) never
    # reach handle_user_exception; Flask announces them with this signal.
    # The receiver is held by the (global) signal, so it must not refer to the
    # app: blinker disconnects it when the app is garbage collected.
    got_request_exception.connect(_note_failure(state), app, weak=False)


def _note_failure(state: State) -> t.Callable[..., None]:
    def note_failure(sender: Flask, **extra: t.Any) -> None:
        """Receive ``got_request_exception``: the work must not commit."""
        state.unit(sender).failed = True

    return note_failure


def end_of_request(
    app: Flask, state: State, unit: Unit, response: Response
) -> Response:
    """Commit or roll back the unit of a request; the response to send."""
    session = unit.session
    if session is None:
        return response
    if not session.in_transaction() and not unit.pending:
        # Nothing began since the last commit (a transactional view's,
        # say): no commit to make, only callbacks that it made ready.
        if unit.ready:
            run_callbacks(app, unit)
        return response
    if (
        unit.failed
        or unit.rollback_only
        or unit.no_autocommit
        or not state.autocommit
        or state.policy._commit_veto(response)
    ):
        unit.pending.clear()
        rollback_quietly(app, session)
        return response
    try:
        commit_keeping_state(session)
    except Exception as e:
        rollback_quietly(app, session)
        # Give the commit error to the app's error handlers, as if the view
        # had raised it; with no handler, this re-raises and Flask answers 500.
        return app.make_response(app.handle_user_exception(e))
    if unit.ready:
        run_callbacks(app, unit)
    return response


def rollback_quietly(app: Flask, session: orm.Session) -> None:
    """Roll *session* back; a failure is logged, since the work is discarded
    either way (the server rolls back when the connection is closed).
    """
    try:
        session.rollback()
    except Exception:
        app.logger.exception("flask_uow: rolling back the session failed.")


def commit_keeping_state(session: orm.Session) -> None:
    """Commit the end of a unit without expiring the session's objects.

    The session is closed next, so reloading them could only fail: objects a
    request loaded stay readable after it, detached, with their committed
    values. Commits in the middle of a unit keep ``expire_on_commit``.
    """
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        session.commit()
    finally:
        session.expire_on_commit = expire


def run_callbacks(app: Flask, unit: Unit) -> None:
    """Run the unit's on_commit callbacks whose commit has happened, in the
    order they were registered. One that raises is logged; the rest still run.

    The callbacks are taken off the unit before the first runs, so that a
    callback whose own transaction commits runs that commit's callbacks, and
    only those, before the next callback of this commit starts: callbacks run
    one after another, never inside one another.
    """
    ready, unit.ready = unit.ready, []
    for callback in ready:
        try:
            callback()
        except Exception:
            app.logger.exception(
                "flask_uow: the on_commit callback %r failed; the commit stands.",
                callback,
            )


def end_request_unit(app: Flask, state: State, unit: Unit) -> None:
    """End the unit of a request that is over. Its context is gone by now;
    one is pushed again only when ending the unit may run app code (on_commit
    callbacks, rollback signals).
    """
    session = unit.session
    environ = t.cast("dict[str, t.Any]", unit.environ)
    if session is not None and (unit.ready or session.in_transaction()):
        ctx = app_context()
        if ctx is None or ctx.app is not app:
            with app.app_context():
                end_unit(app, state, environ, unit)
            return
    end_unit(app, state, environ, unit)


def end_unit(app: Flask, state: State, store: dict[str, t.Any], unit: Unit) -> None:
    """End *unit*, kept in *store*: run the callbacks whose commit happened
    (they may still use the unit), forget it, then close its session, rolling
    back what is left. Never raises.
    """
    if unit.ready:
        run_callbacks(app, unit)
    if store.get(state.key) is unit:
        del store[state.key]
    # Blocks left open (a generator abandoned inside one, say) end with it.
    unit.frames.clear()
    session, unit.session = unit.session, None
    if session is None:
        return
    state.live -= 1
    if session.in_transaction():
        rollback_quietly(app, session)  # Rolled back explicitly, so it is signalled.
    try:
        session.close()
    except Exception:
        app.logger.exception("flask_uow: closing the session failed.")
    for hook in state.ended:
        hook(unit)
