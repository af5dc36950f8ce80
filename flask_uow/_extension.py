"""The :class:`UnitOfWork` extension: configuration, per-app state, session access."""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import types
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import current_app
from flask import Flask
from flask import has_app_context

from ._config import check_config
from ._config import session_options
from ._config import session_options_error
from ._engines import create_engines
from ._engines import RoutingSession
from ._helpers import RequestHelpers
from ._lifecycle import CommitVeto
from ._lifecycle import default_commit_veto
from ._lifecycle import install
from ._lifecycle import RetryClassifier
from ._lifecycle import State
from ._lifecycle import Unit
from ._models import check_flask_sqlalchemy_config
from ._models import MetadataArgument
from ._models import ModelMethods
from ._models import Models
from ._query_info import QueryRecord
from ._query_info import read_settings
from ._recording import Insight
from ._recovery import install_cli
from ._recovery import recover
from ._recovery import Resolution
from ._replica_config import DEFAULTS as REPLICA_DEFAULTS
from ._replica_config import split_replicas
from ._replica_hooks import install as install_replicas
from ._replicas import create_replicas
from ._replicas import PRIMARY_MARK
from ._retry import is_transient_error
from ._sqlite import check_begin_mode
from ._streaming import install as install_streaming
from ._transaction import callback_list
from ._transaction import check_isolation_level
from ._transaction import check_retries
from ._transaction import Retrier
from ._transaction import run_in_transactions
from ._transaction import transaction_argument_error
from ._transaction import TransactionBlock
from ._twophase import check_two_phase
from ._twophase import Coordinator
from ._twophase import install as install_two_phase

P = t.ParamSpec("P")
R = t.TypeVar("R")

_NO_APP_CONTEXT = (
    "Working outside of application context: flask_uow needs to know which app's"
    " database to use. Use it inside a request or a CLI command, or push a"
    " context with 'with app.app_context():'."
)


def _dispose_engines(engines: cabc.Iterable[sa.Engine]) -> None:
    for engine in engines:
        engine.dispose()


class UnitOfWork(RequestHelpers, ModelMethods):
    """Make each request of a Flask app one unit of work over a SQLAlchemy
    session.

    The session is created when a view first uses :attr:`session`. When the
    request succeeds its work is committed before the response leaves the app;
    when anything fails it is rolled back. Outside requests, each application
    context gets its own session and nothing is committed implicitly.

    One instance can serve several apps; all state is kept per app, so the
    instance never holds an app.

    :param app: Call :meth:`init_app` on this app now.
    :param metadata: The app's models: a declarative base class, a
        ``MetaData``, or a list of them (for tables on several engines). It
        gives :attr:`metadata`, :meth:`create_all`, Flask-Migrate support, and
        the model classes in ``flask shell``.

    .. versionchanged:: 0.2
        The *metadata* argument.

    .. versionadded:: 0.1
    """

    def __init__(
        self, app: Flask | None = None, *, metadata: MetadataArgument = None
    ) -> None:
        self._models = Models(metadata)
        self._states: weakref.WeakKeyDictionary[Flask, State] = (
            weakref.WeakKeyDictionary()
        )
        self._coordinators: weakref.WeakKeyDictionary[Flask, Coordinator] = (
            weakref.WeakKeyDictionary()
        )
        self._commit_veto: CommitVeto = default_commit_veto
        self._retry_classifier: RetryClassifier = is_transient_error
        self._insight = Insight()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``UOW_*`` configuration of *app*, create its engines and
        register the request hooks.

        Engines are created here but connect only when a session first needs a
        connection. They are disposed when the app is garbage collected, or by
        :meth:`dispose_engines`.

        :param app: The Flask app. Its config must have ``UOW_ENGINES``.
        :raise RuntimeError: The app is already registered, or ``UOW_ENGINES`` is
            missing or has no ``"default"`` engine.
        :raise TypeError: A configuration value has the wrong type.
        :raise ValueError: A URL or an engine or session option is invalid,
            or ``UOW_TWO_PHASE`` is on and an engine cannot prepare
            transactions.
        """
        if "uow" in app.extensions:
            raise RuntimeError(
                f"The app {app.name!r} is already set up with a 'UnitOfWork'"
                " ('init_app' was called twice). Call 'init_app' once per app and"
                " use app.extensions['uow'] to reach the instance."
            )
        check_flask_sqlalchemy_config(app.config)
        app.config.setdefault("UOW_SESSION_OPTIONS", {})
        app.config.setdefault("UOW_AUTOCOMMIT", True)
        app.config.setdefault("UOW_RETRY_DELAY", 0.05)
        app.config.setdefault("UOW_RETRY_MAX_DELAY", 2.0)
        app.config.setdefault("UOW_TWO_PHASE", False)
        for key, value in REPLICA_DEFAULTS.items():
            app.config.setdefault(key, value)
        check_config(app.config)
        query_settings = read_settings(app)
        options = session_options(app.config["UOW_SESSION_OPTIONS"])
        entries, listed = split_replicas(app.config.get("UOW_ENGINES"))
        engines = create_engines(entries, app.instance_path)
        try:
            replicas = create_replicas(app, engines, listed, entries)
        except BaseException:
            _dispose_engines(engines.values())
            raise
        all_engines = [*engines.values(), *(replicas.engines() if replicas else ())]
        try:
            two_phase = check_two_phase(app.config["UOW_TWO_PHASE"], engines)
        except (TypeError, ValueError):
            _dispose_engines(all_engines)
            raise
        try:
            factory: orm.sessionmaker[orm.Session] = orm.sessionmaker(
                engines["default"], class_=RoutingSession, engines=engines, **options
            )
            factory().close()  # Reject unknown session options now, not mid-request.
        except (TypeError, ValueError, sa_exc.ArgumentError) as e:
            _dispose_engines(all_engines)
            raise session_options_error(e) from e
        state = State(
            engines,
            factory,
            app.config,
            lambda: self._commit_veto,
            lambda: self._retry_classifier,
        )
        if replicas is not None:
            state.replicas = replicas
            install_replicas(app, state, replicas)  # Before install: see there.
        # Before install, so that the Server-Timing hook sees the commit's work.
        self._insight.install(app, state, query_settings)
        install(app, state)
        install_streaming(app, state)
        coordinator = install_two_phase(state, two_phase)
        if coordinator is not None:
            self._coordinators[app] = coordinator
        install_cli(app)
        self._states[app] = state
        app.extensions["uow"] = self
        app.shell_context_processor(self._shell_context)
        weakref.finalize(app, _dispose_engines, all_engines)

    def _shell_context(self) -> dict[str, t.Any]:
        return {"uow": self, **self._models.shell_context()}

    def _state(self, app: Flask | None = None) -> tuple[Flask, State]:
        if app is None:
            if not has_app_context():
                raise RuntimeError(_NO_APP_CONTEXT)
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._states.get(app)
        if state is None:
            raise RuntimeError(
                f"The app {app.name!r} is not set up with this 'UnitOfWork'. Call"
                " 'uow.init_app(app)' in the app factory before using it."
            )
        return app, state

    def _unit(self) -> Unit:
        app, state = self._state()
        return state.unit(app)

    @property
    def session(self) -> orm.Session:
        """The session of the current unit of work: the current request's, or
        outside requests the current application context's. It is created on
        first access; no connection is checked out until it runs a statement.

        :raise RuntimeError: There is no application context, or the app was not
            set up with :meth:`init_app`.
        """
        app, state = self._state()
        return state.session(app)

    @property
    def engines(self) -> cabc.Mapping[str, sa.Engine]:
        """The current app's engines by name, from ``UOW_ENGINES`` (read-only)."""
        return types.MappingProxyType(self._state()[1].engines)

    @property
    def replica_engines(self) -> cabc.Mapping[str, tuple[sa.Engine, ...]]:
        """The current app's read replica engines, by the name of the engine
        they replicate (read-only; engines without replicas are absent). See
        :doc:`/replicas`.

        .. versionadded:: 0.1
        """
        replicas = self._state()[1].replicas
        if replicas is None:
            return types.MappingProxyType({})
        return types.MappingProxyType(
            {
                group.name: tuple(r.engine for r in group.replicas)
                for group in replicas.groups.values()
            }
        )

    @property
    def engine(self) -> sa.Engine:
        """The current app's ``"default"`` engine."""
        return self._state()[1].engines["default"]

    @property
    def recorded_queries(self) -> list[QueryRecord]:
        """The statements the current unit of work has run so far, oldest
        first, when ``UOW_RECORD_QUERIES`` is on for the current app (an empty
        list when it is off). See :doc:`queries`.

        :raise RuntimeError: There is no application context.

        .. versionadded:: 0.1
        """
        app, state = self._state()
        return self._insight.recorded(app, state)

    def assert_max_queries(self, n: int) -> t.ContextManager[list[QueryRecord]]:
        """A block in which the apps of this instance may run at most *n*
        statements, across all units of work (each test-client request is
        one), with or without an application context. Transaction control
        (``BEGIN``, ``COMMIT``, ``SAVEPOINT``...) is not counted. It yields the
        list of the statements, filled as they run.

        .. code-block:: python

            with uow.assert_max_queries(2):
                client.get("/orders")

        :param n: The number of statements allowed.
        :raise TypeError: *n* is not an int.
        :raise ValueError: *n* is negative.
        :raise AssertionError: When the block ends, more statements ran; the
            message lists them, numbered, with their call sites.

        .. versionadded:: 0.1
        """
        return self._insight.expect(n, exact=False)

    def assert_num_queries(self, n: int) -> t.ContextManager[list[QueryRecord]]:
        """Like :meth:`assert_max_queries`, but exactly *n* statements must
        run in the block.

        .. versionadded:: 0.1
        """
        return self._insight.expect(n, exact=True)

    def dispose_engines(self, app: Flask | None = None, *, close: bool = True) -> None:
        """Empty the pools of the app's engines; the engines stay usable and
        open new connections when needed.

        Pools are disposed when the app is garbage collected too. Call this
        when an app is shut down explicitly. In a worker process forked after
        the engines were used (a server that loads the app before forking),
        call it with ``close=False`` before the worker first uses the database,
        so that it drops the connections it inherited without closing them
        under the parent.

        :param app: The app; the current app if not given.
        :param close: Close the pooled connections (the default), or only
            forget them.
        """
        state = self._state(app)[1]
        for engine in state.engines.values():
            engine.dispose(close=close)
        if state.replicas is not None:
            for engine in state.replicas.engines():
                engine.dispose(close=close)

    def recover(
        self, app: Flask | None = None, *, dry_run: bool = False
    ) -> list[Resolution]:
        """Resolve the two-phase commits of the app that a crash interrupted,
        and delete decision records older than an hour that nothing needs.
        The ``flask uow recover`` command calls it.

        Every transaction that flask_uow prepared on one of the app's engines
        and that is still prepared is committed if its decision record says
        so, and rolled back otherwise. One whose unit of work is still
        committing is waited for, up to five seconds, then left alone. Prepared
        transactions of other software, or of apps with another ``"default"``
        database, are never touched. See :doc:`/two_phase`.

        :param app: The app; the current app if not given.
        :param dry_run: Only report what would be done.
        :return: What was done with each prepared transaction.
        :raise RuntimeError: ``UOW_TWO_PHASE`` is off for the app.

        .. versionadded:: 0.1
        """
        app = self._state(app)[0]
        coordinator = self._coordinators.get(app)
        if coordinator is None:
            raise RuntimeError(
                f"The app {app.name!r} does not use two-phase commit, so there is"
                " nothing to recover. Set 'UOW_TWO_PHASE = True' to use it."
            )
        return recover(coordinator, dry_run)

    def mark_rollback_only(self) -> None:
        """Make the current transaction roll back at its end instead of
        committing, without raising an exception.

        Inside :meth:`transaction` or :meth:`transactional` this applies to the
        innermost one (for a nested one, only its savepoint is rolled back).
        Outside of them it applies to the end of the unit of work: the
        request's work is rolled back at its end instead of committed. Explicit
        commits are not affected: a later ``uow.session.commit()`` still
        commits.

        :raise RuntimeError: There is no application context.
        """
        unit = self._unit()
        if unit.frames:
            unit.frames[-1].rollback_only = True
        else:
            unit.rollback_only = True

    def no_autocommit(self, view: cabc.Callable[P, R]) -> cabc.Callable[P, R]:
        """Decorate a view whose work must never be committed at the end of the
        request; it is rolled back instead. Explicit commits inside the view are
        not affected. Works on ``async def`` views too.

        :param view: The view function.
        """
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> t.Any:
                self._unit().no_autocommit = True
                return await view(*args, **kwargs)

            return t.cast("cabc.Callable[P, R]", async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self._unit().no_autocommit = True
            return view(*args, **kwargs)

        return wrapper

    def primary(self, view: cabc.Callable[P, R]) -> cabc.Callable[P, R]:
        """Decorate a view whose unit of work must use the primary database
        even for GET, HEAD and OPTIONS requests, which otherwise read from a
        read replica (see :doc:`/replicas`). Use it on views that write, or
        that must read the very latest data. Its ``before_request`` hooks use
        the primary too. The view itself is returned, marked, so the order
        with ``@app.get`` does not matter; on a class-based view, list it in
        the class's ``decorators``.

        .. code-block:: python

            @app.get("/visit")
            @uow.primary
            def visit():
                uow.session.add(Visit())
                return "counted"

        Without replicas it changes nothing.

        :param view: The view function.

        .. versionadded:: 0.1
        """
        setattr(view, PRIMARY_MARK, True)
        return view

    def transaction(
        self,
        *,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
        **unsupported: t.Any,
    ) -> t.ContextManager[orm.Session]:
        """A block that runs in a transaction of the current unit of work, and
        yields its session.

        The outermost block commits when it ends normally, and rolls back and
        re-raises when an exception escapes it. A block inside another one is a
        SAVEPOINT: an exception escaping it rolls back only the savepoint, and
        the outer transaction can still commit.

        Beginning an outermost block is a commit point: work the unit of work
        did before it (a ``before_request`` hook that loaded the current user,
        say) is committed first, so that the block starts a fresh transaction
        in which an isolation level and retries can apply. This holds with
        ``UOW_AUTOCOMMIT`` off and outside requests too. The earlier work is
        rolled back instead if the unit of work is already marked to roll back
        (after an exception, :meth:`mark_rollback_only` or in a
        :meth:`no_autocommit` view).

        .. code-block:: python

            with uow.transaction() as session:
                session.add(Order(...))

        A block cannot be re-run, so it takes no ``retries``; decorate a
        function with :meth:`transactional` to retry.

        The returned object holds only the arguments: it can be made outside
        an application context (at import time, say) and entered any number
        of times, in turn or inside itself, each entry a transaction of its
        own. Inside the block, ``uow.session.commit()``, ``rollback()`` and
        ``close()`` raise ``RuntimeError``.

        :param durable: Raise ``RuntimeError`` when the block is nested inside
            another transaction, instead of making it a savepoint: its commit is
            meant to be final.
        :param isolation_level: For example ``"SERIALIZABLE"``: the isolation
            level of this transaction only, on the connection of the
            ``"default"`` engine. Only for an outermost transaction.
        :param sqlite_begin: How the transaction begins on SQLite engines:
            ``"immediate"`` takes the write lock at once, waiting for it up to
            the busy timeout, so the transaction cannot fail later when it
            writes; ``"deferred"`` takes it at the first write, so readers
            never wait; ``"exclusive"`` also keeps readers out outside WAL
            mode. By default, each engine's ``sqlite_begin`` from
            :data:`UOW_ENGINES` (``"immediate"`` unless set). Other databases
            and nested transactions (savepoints) ignore it.
        :raise RuntimeError: When the block is entered: there is no
            application context, or *durable* or *isolation_level* was given
            to a nested transaction.
        :raise TransactionAbortedError: When the block ends: the database
            already aborted its transaction, or a nested block's savepoint
            could not be rolled back; nothing was committed.
        :raise TypeError: ``retries`` or another unknown argument was given.
        :raise ValueError: *isolation_level* is not an isolation level, or
            *sqlite_begin* not a begin mode.

        .. versionchanged:: 0.1
            Added *sqlite_begin*.
        """
        if unsupported:
            raise TypeError(transaction_argument_error(unsupported))
        level = check_isolation_level(isolation_level)
        begin = check_begin_mode(sqlite_begin)
        return TransactionBlock(self._state, durable, level, begin)

    @t.overload
    def transactional(self, fn: cabc.Callable[P, R], /) -> cabc.Callable[P, R]: ...

    @t.overload
    def transactional(
        self,
        fn: None = None,
        /,
        *,
        retries: int = 0,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
    ) -> cabc.Callable[[cabc.Callable[P, R]], cabc.Callable[P, R]]: ...

    def transactional(
        self,
        fn: t.Any = None,
        /,
        *,
        retries: int = 0,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
    ) -> t.Any:
        """Decorate a function (a view, a blueprint's view, or any function
        called in an app context) so that each call runs in a transaction, as
        with :meth:`transaction`. Use it bare or with arguments. ``async def``
        functions are supported.

        On a view, the transaction commits when the view returns, before the
        response is built, so a failed commit reaches the app's error handlers
        like any exception raised by the view.

        .. code-block:: python

            @app.post("/transfers")
            @uow.transactional(retries=3, isolation_level="SERIALIZABLE")
            def transfer():
                ...

        :param retries: When the function or its commit raises an error that
            the retry classifier calls transient (see
            :func:`~flask_uow.is_transient_error`), roll back, wait, and call the
            function again, at most this many more times; then re-raise the
            last error. Only an outermost transaction is retried: a nested one
            lets the error reach the outermost. The wait before retry *n* is a
            random time up to ``UOW_RETRY_DELAY * 2 ** (n - 1)`` seconds, capped
            at ``UOW_RETRY_MAX_DELAY``. Retried functions must be safe to run
            again: keep side effects for :meth:`on_commit`.
        :param durable: See :meth:`transaction`.
        :param isolation_level: See :meth:`transaction`.
        :param sqlite_begin: See :meth:`transaction`.
        :raise TypeError: *fn* is not callable or is a generator function, or
            *retries* is not an int.
        :raise ValueError: *retries* is negative, *isolation_level* is not an
            isolation level, or *sqlite_begin* not a begin mode.
        :raise RuntimeError: When called: there is no application context, or
            *durable* or *isolation_level* was given to a nested transaction.
        """
        retries = check_retries(retries)
        level = check_isolation_level(isolation_level)
        begin = check_begin_mode(sqlite_begin)

        def decorate(fn: cabc.Callable[P, R]) -> cabc.Callable[P, R]:
            def retrier() -> Retrier:
                app, state = self._state()
                return Retrier(app, state, retries, durable, level, begin)

            return run_in_transactions(fn, retrier)

        if fn is not None:
            return decorate(fn)
        return decorate

    def on_commit(self, callback: cabc.Callable[[], object]) -> None:
        """Run *callback* (with no arguments) after the enclosing unit of work
        commits: the outermost :meth:`transaction` around this call, or, outside
        of one, the next commit of the session (in a request, the end-of-request
        commit). Use it for side effects that must not happen unless the data
        is saved, such as sending an email or enqueueing a task.

        Callbacks run in the order they were registered. They never run when
        the transaction rolls back; one registered inside a savepoint that rolls
        back is dropped. A callback that raises is logged with the app's logger
        and the others still run; the commit stands and the response is
        unchanged.

        A callback that writes should open its own :meth:`transaction`. Writes
        it makes without one join the unit of work's next transaction: in a
        request, they are committed or rolled back with the rest of the
        request's work, unless the request has already finished (callbacks of
        the end-of-request commit run after it), in which case they are rolled
        back when the session closes.

        :param callback: A function taking no arguments.
        :raise TypeError: *callback* is not callable.
        :raise RuntimeError: There is no application context.
        """
        if not callable(callback):
            raise TypeError(
                f"'on_commit' needs a function to call, not"
                f" {type(callback).__name__!r}. Pass the function itself, or a"
                " lambda or functools.partial to give it arguments."
            )
        app, state = self._state()
        state.session(app)  # The callback waits for this session's commit.
        if state.isolation is not None:
            callback = state.isolation.recorded(callback)
        callback_list(state.unit(app)).append(callback)

    def retry_classifier(self, classifier: RetryClassifier) -> RetryClassifier:
        """Register the function that decides whether an error is transient,
        so that a transaction with ``retries`` runs again after it. It replaces
        :func:`~flask_uow.is_transient_error` for every app of this instance
        and can be used as a decorator; call the default from it to extend it.

        :param classifier: ``classifier(exc) -> bool``; ``True`` means retry.
        """
        if not callable(classifier):
            raise TypeError(
                f"'retry_classifier' needs a function taking the exception, not"
                f" {type(classifier).__name__!r}."
            )
        self._retry_classifier = classifier
        return classifier

    def commit_veto(self, veto: CommitVeto) -> CommitVeto:
        """Register the function that decides, from the response, whether a
        successful request must roll back instead of committing. It replaces
        :func:`~flask_uow.default_commit_veto` (which vetoes status 400 and
        above) for every app of this instance. Can be used as a decorator.

        The veto is asked only when nothing else already decided to roll back
        (an exception, :meth:`no_autocommit`, :meth:`mark_rollback_only`).

        :param veto: ``veto(response) -> bool``; ``True`` means "roll back".
        """
        if not callable(veto):
            raise TypeError(
                f"'commit_veto' needs a function taking the response, not"
                f" {type(veto).__name__!r}."
            )
        self._commit_veto = veto
        return veto
