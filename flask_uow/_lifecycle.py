"""The request lifecycle: commit on the response path, teardown as a safety net."""

from __future__ import annotations

import collections.abc as cabc
import itertools
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import g
from flask import got_request_exception
from flask import request
from flask import request_started
from flask import Response
from flask.globals import _cv_request

from . import signals
from ._bridge import has_receivers
from ._bridge import listen
from ._bridge import send_quietly
from ._changes import ChangeSet
from ._sqlite import begin_binds

if t.TYPE_CHECKING:
    from ._recording import UnitQueries
    from ._replicas import Replicas
    from ._transaction import Frame
    from .testing import Isolation

CommitVeto = cabc.Callable[[Response], bool]
_state_numbers = itertools.count(1)
RetryClassifier = cabc.Callable[[BaseException], bool]


def default_commit_veto(response: Response) -> bool:
    """The commit veto used unless one is registered with
    :meth:`~flask_uow.UnitOfWork.commit_veto`: veto (roll back) every response
    whose status is 400 or higher.

    :param response: The response the request is about to send.
    :return: ``True`` to roll back instead of committing.
    """
    return response.status_code >= 400


#: A connection a savepoint began on, and the savepoint's name there.
Savepoint = tuple[sa.Connection, str]


class Unit:
    """The unit of work of one request, or of one application context outside
    requests. Its session is created on first use.
    """

    __slots__ = (
        "session",
        "finished",
        "failed",
        "rollback_only",
        "no_autocommit",
        "frames",
        "pending",
        "ready",
        "connections",
        "savepoints",
        "change_sets",
        "streaming",
        "queries",
    )

    def __init__(self) -> None:
        self.session: orm.Session | None = None
        #: Set before the end-of-request commit or rollback, so that it runs once.
        self.finished = False
        #: An exception was raised while handling the request, handled or not.
        self.failed = False
        self.rollback_only = False
        self.no_autocommit = False
        #: The active ``uow.transaction()`` blocks, outermost first.
        self.frames: list[Frame] = []
        #: on_commit callbacks waiting for the session's next real commit.
        self.pending: list[cabc.Callable[[], object]] = []
        #: on_commit callbacks whose commit happened, waiting to be run.
        self.ready: list[cabc.Callable[[], object]] = []
        #: The connections of the session's transaction, in the order it began
        #: on them; empty when no database transaction is open.
        self.connections: list[sa.Connection] = []
        #: The connections each open savepoint began on, with its name.
        self.savepoints: dict[orm.SessionTransaction, list[Savepoint]] = {}
        #: Changes recorded per transaction level, while signals have receivers.
        self.change_sets: dict[orm.SessionTransaction, ChangeSet] = {}
        #: The unit ends when the streamed response the app sent is closed, or,
        #: as a safety net, when it is garbage collected (see ``_streaming``).
        self.streaming: weakref.finalize[..., None] | None = None
        #: The statements the unit ran, while query insight is on.
        self.queries: UnitQueries | None = None

    @property
    def marked_for_rollback(self) -> bool:
        """An exception, :meth:`~flask_uow.UnitOfWork.mark_rollback_only` or a
        :meth:`~flask_uow.UnitOfWork.no_autocommit` view says that the unit's
        own work must not be committed.
        """
        return self.failed or self.rollback_only or self.no_autocommit


Store = dict[str, t.Any]


#: Set in a request's WSGI environ when its app starts handling it.
_DISPATCHED = "flask_uow.dispatched"


def mark_dispatched(sender: Flask, **extra: t.Any) -> None:
    """Receive ``request_started``: the app is handling the current request."""
    request.environ[_DISPATCHED] = True


def request_store(app: Flask) -> Store | None:
    """The WSGI environ of the request *app* is handling, if there is one.

    Flask has no public way to ask which app the current request context belongs
    to, so this reads the private ``_cv_request`` context variable, in this one
    place; ``tests/test_flask_contract.py`` fails loudly if Flask changes it.
    """
    ctx = _cv_request.get(None)
    if ctx is not None and ctx.app is app:
        environ: Store = ctx.request.environ
        if environ.get(_DISPATCHED):
            return environ
    return None


def unit_store(app: Flask) -> Store:
    """Return where *app*'s current unit of work is kept: a dict that lives
    exactly as long as the unit may.

    While *app* handles a request (it has started dispatching it), that is the
    request's WSGI environ, so every request gets its own unit even when a test
    pushed one app context for several requests. Elsewhere (CLI commands, jobs,
    shell, a context of *app* pushed inside another app's request, or a request
    context that is pushed but not handled, as pytest-flask's or
    ``app.test_request_context()``'s) it is the attributes of the application
    context's ``g``, so each application context gets its own unit.
    """
    store = request_store(app)
    return context_store() if store is None else store


def context_store() -> Store:
    """The attributes of the current application context's ``g``."""
    return t.cast(Store, vars(g._get_current_object()))


class State:
    """What one :class:`~flask_uow.UnitOfWork` keeps for one app."""

    def __init__(
        self,
        engines: dict[str, sa.Engine],
        factory: orm.sessionmaker[orm.Session],
        config: cabc.Mapping[str, t.Any],
        get_veto: cabc.Callable[[], CommitVeto],
        get_classifier: cabc.Callable[[], RetryClassifier],
    ) -> None:
        self.engines = engines
        self.factory = factory
        self.autocommit: bool = config["UOW_AUTOCOMMIT"]
        self.retry_delay: float = config["UOW_RETRY_DELAY"]
        self.max_delay: float = config["UOW_RETRY_MAX_DELAY"]
        self.get_veto = get_veto
        self.get_classifier = get_classifier
        #: How this app's SQLite transactions begin; None without SQLite.
        self.begin_binds = begin_binds(engines.values())
        #: The active test isolation, see :class:`flask_uow.testing.Isolation`.
        self.isolation: Isolation | None = None
        #: The name of this app's unit in a store (see :func:`unit_store`).
        self.key = f"flask_uow.unit.{next(_state_numbers)}"
        #: The units whose session is open, for test isolation to find.
        self.open_units: set[Unit] = set()
        #: The read replicas of the app's engines, if it has any.
        self.replicas: Replicas | None = None

    def unit(self, app: Flask) -> Unit:
        """The current unit of work of *app*, created if there is none yet."""
        store = unit_store(app)
        unit: Unit | None = store.get(self.key)
        if unit is None:
            unit = store[self.key] = Unit()
        return unit

    def session(self, app: Flask) -> orm.Session:
        """The current unit's session, created on first use."""
        unit = self.unit(app)
        session = unit.session
        if session is None:
            if self.isolation is None:
                route = None if self.replicas is None else self.replicas.route(app)
                session = self.factory(uow_unit=unit, uow_route=route)
                if self.begin_binds is not None:
                    session.uow_begin = self.begin_binds.for_unit(self.key, unit)  # type: ignore[attr-defined]
            else:
                connections = self.isolation.connections
                session = self.factory(
                    uow_unit=unit,
                    bind=connections["default"],
                    engines=connections,
                    join_transaction_mode="create_savepoint",
                )
            unit.session = session
            self.open_units.add(unit)
        return session

    def note_failure(self, sender: Flask, **extra: t.Any) -> None:
        """Receive ``got_request_exception``: the request's work must not commit."""
        self.unit(sender).failed = True

    def before_retry(
        self, app: Flask, session: orm.Session, exc: BaseException, attempt: int
    ) -> None:
        """Called before a transactional function is run again."""
        app.logger.info(
            "flask_uow: retrying a transaction (retry %d) after %s.",
            attempt,
            type(exc).__name__,
        )
        if has_receivers(signals.before_retry, app):
            send_quietly(
                app,
                signals.before_retry,
                session=session,
                exception=exc,
                attempt=attempt,
            )

    def should_commit(self, unit: Unit, response: Response) -> bool:
        """The end-of-request commit decision."""
        if unit.marked_for_rollback:
            return False
        return self.autocommit and not self.get_veto()(response)


def install(app: Flask, state: State) -> None:
    """Register the request hooks that drive *state*'s units of work on *app*."""

    def finish_request(response: Response) -> Response:
        store = unit_store(app)
        unit: Unit | None = store.get(state.key)
        if unit is None or unit.finished:
            return response
        unit.finished = True
        return end_of_request(unit, response)

    def end_of_request(unit: Unit, response: Response) -> Response:
        """Commit or roll back; the response to send."""
        session = unit.session
        if session is None:
            return response
        if not session.in_transaction() and not unit.pending:
            # Nothing began since the last commit (a transactional view's,
            # say): no commit to make, only callbacks that it made ready.
            run_callbacks(app, unit)
            return response
        if not state.should_commit(unit, response):
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
        run_callbacks(app, unit)
        return response

    original_handle_user_exception = app.handle_user_exception

    def handle_user_exception(e: Exception) -> t.Any:
        # Flask calls this for every exception raised by a view or a
        # before_request hook, handled by an errorhandler or not; it is the one
        # place a handled exception can be noticed.
        state.unit(app).failed = True
        return original_handle_user_exception(e)

    def close_request_unit(exc: BaseException | None) -> None:
        store = request_store(app)
        if store is None:  # Not handled: its app context's teardown closes it.
            return
        unit: Unit | None = store.get(state.key)
        if unit is not None and unit.streaming is None:
            close_unit(app, state, store)

    def close_context_unit(exc: BaseException | None) -> None:
        close_unit(app, state, context_store())

    listen(state.factory)
    app.after_request(finish_request)
    app.teardown_request(close_request_unit)
    app.teardown_appcontext(close_context_unit)
    app.handle_user_exception = handle_user_exception  # type: ignore[method-assign]
    # Exceptions raised after the view (by an after_request hook, say) never
    # reach handle_user_exception; Flask announces them with this signal.
    # The receiver is held by the (global) signal, so it must not refer to the
    # app: blinker disconnects it when the app is garbage collected.
    got_request_exception.connect(state.note_failure, app, weak=False)
    request_started.connect(mark_dispatched, app, weak=False)


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


def close_unit(app: Flask, state: State, store: Store) -> None:
    """End *state*'s unit of work kept in *store*: run the callbacks whose
    commit happened (they may still use the unit), then close its session,
    rolling back what is left. Never raises.
    """
    unit: Unit | None = store.get(state.key)
    if unit is None:
        return
    run_callbacks(app, unit)
    del store[state.key]
    # Blocks left open (a generator abandoned inside one, say) end with it.
    unit.frames.clear()
    session, unit.session = unit.session, None
    state.open_units.discard(unit)
    if session is None:
        return
    if session.in_transaction():
        rollback_quietly(app, session)  # Rolled back explicitly, so it is signalled.
    try:
        session.close()
    except Exception:
        app.logger.exception("flask_uow: closing the session failed.")
