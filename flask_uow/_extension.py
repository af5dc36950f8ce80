"""The :class:`UnitOfWork` extension: ``init_app`` sets up each capability,
the methods come grouped by capability from the ``_api_*`` modules.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import types
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask

from . import _detached
from . import _lifecycle
from . import _outbox
from . import _relay
from . import _replica_hooks
from . import _shared_context
from . import _streaming
from . import _telemetry
from . import _twophase
from ._api_outbox import OutboxMethods
from ._api_queries import QueryMethods
from ._api_servers import ServerMethods
from ._api_transactions import TransactionMethods
from ._config import check_config
from ._config import session_options
from ._config import session_options_error
from ._current import CurrentSession
from ._engines import bind_key_cache
from ._engines import create_engines
from ._helpers import RequestHelpers
from ._lifecycle import default_commit_veto
from ._models import check_flask_sqlalchemy_config
from ._models import MetadataArgument
from ._models import ModelMethods
from ._models import Models
from ._query_info import read_settings
from ._recording import Insight
from ._recovery import install_cli
from ._replica_config import DEFAULTS as REPLICA_DEFAULTS
from ._replica_config import split_replicas
from ._replicas import create_replicas
from ._replicas import Replicas
from ._retry import is_transient_error
from ._sqlite import begin_modes
from ._sqlite import warn_under_gevent
from ._state import current_app_and_state
from ._state import State
from ._twophase import check_two_phase
from ._twophase import Coordinator


def all_engines(
    engines: cabc.Mapping[str, sa.Engine], replicas: Replicas | None
) -> list[sa.Engine]:
    """An app's engines and its replicas' engines."""
    return [*engines.values(), *(replicas.engines() if replicas else ())]


def _dispose(engines: cabc.Iterable[sa.Engine]) -> None:
    for engine in engines:
        engine.dispose()


class UnitOfWork(
    TransactionMethods,
    QueryMethods,
    ServerMethods,
    OutboxMethods,
    RequestHelpers,
    ModelMethods,
):
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
        #: The session of the current unit of work: the current request's, or
        #: outside requests the current application context's, made on first
        #: use. It is one object, a :class:`~flask_uow.CurrentSession` (a
        #: :class:`~sqlalchemy.orm.scoped_session`), that may be taken at
        #: import time and handed to anything that wants a session; each use
        #: resolves to the current unit's session, and with no application
        #: context raises ``RuntimeError``. ``uow.session()`` returns the
        #: session itself.
        self.session = CurrentSession(self._states)
        self._replicas: weakref.WeakKeyDictionary[Flask, Replicas] = (
            weakref.WeakKeyDictionary()
        )
        self._coordinators: weakref.WeakKeyDictionary[Flask, Coordinator] = (
            weakref.WeakKeyDictionary()
        )
        self._outboxes: weakref.WeakKeyDictionary[Flask, _outbox.Outbox] = (
            weakref.WeakKeyDictionary()
        )
        self._commit_veto = default_commit_veto
        self._retry_classifier = is_transient_error
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
        detached_writes = _detached.read_mode(app)
        options = session_options(app.config["UOW_SESSION_OPTIONS"])
        entries, listed = split_replicas(app.config.get("UOW_ENGINES"))
        engines = create_engines(entries, app.instance_path)
        created = list(engines.values())
        with _disposed_on_error(created):
            replicas = create_replicas(app, engines, listed, entries)
            created += replicas.engines() if replicas else ()
            two_phase = check_two_phase(app.config["UOW_TWO_PHASE"], engines)
            factory = _sessionmaker(engines, options, self.session.session_class)
        state = State(engines, factory, app.config, self)
        # Each capability sets itself up; the order matters only where a
        # comment says so.
        warn_under_gevent(app.logger, engines)
        modes = begin_modes(engines.values())
        if modes is not None:  # Before the lifecycle: see BeginModes.after_begin.
            state.opened.append(modes.opened)
            sa.event.listen(factory, "after_begin", modes.after_begin)
        if replicas is not None:
            self._replicas[app] = replicas
            # Before the lifecycle: after_request functions run in reverse,
            # so the cookie is set after the end-of-request commit.
            _replica_hooks.install(app, state, replicas)
        # Before the lifecycle, so that the Server-Timing hook sees the commit.
        self._insight.install(app, state, query_settings, replicas)
        _lifecycle.install(app, state)
        _shared_context.install(state)
        _detached.install(state, detached_writes)
        _streaming.install(app, state)
        coordinator = _twophase.install(state, two_phase)
        if coordinator is not None:
            self._coordinators[app] = coordinator
        # After two-phase commit: the commit span starts after its PREPAREs.
        _telemetry.install(app, state, replicas)
        install_cli(app)
        box = _outbox.install(app, state, self._models.include)
        if box is not None:
            self._outboxes[app] = box
            _relay.install_cli(app, box)
        self._states[app] = state
        app.extensions["uow"] = self
        app.shell_context_processor(self._shell_context)
        weakref.finalize(app, _dispose, created)

    def _shell_context(self) -> dict[str, t.Any]:
        return {"uow": self, **self._models.shell_context()}

    def _state(self, app: Flask | None = None) -> tuple[Flask, State]:
        return current_app_and_state(self._states, app)

    @property
    def engines(self) -> cabc.Mapping[str, sa.Engine]:
        """The current app's engines by name, from ``UOW_ENGINES`` (read-only)."""
        return types.MappingProxyType(self._state()[1].engines)

    @property
    def engine(self) -> sa.Engine:
        """The current app's ``"default"`` engine."""
        return self._state()[1].engines["default"]

    def dispose_engines(self, app: Flask | None = None, *, close: bool = True) -> None:
        """Empty the pools of the app's engines; the engines stay usable and
        open new connections when needed.

        Pools are disposed when the app is garbage collected too. Call this
        when an app is shut down explicitly. A process forked after the
        engines were used (``gunicorn --preload``, ``multiprocessing``) needs
        no call: flask_uow drops the pools it inherited, without closing the
        parent's connections, right after the fork (see :doc:`/deploying`).

        :param app: The app; the current app if not given.
        :param close: Close the pooled connections (the default), or only
            forget them.
        """
        app, state = self._state(app)
        replicas = self._replicas.get(app)
        for engine in all_engines(state.engines, replicas):
            engine.dispose(close=close)


@contextlib.contextmanager
def _disposed_on_error(engines: list[sa.Engine]) -> cabc.Iterator[None]:
    """Dispose *engines* (the list as it is then) if the block raises."""
    try:
        yield
    except BaseException:
        _dispose(engines)
        raise


def _sessionmaker(
    engines: dict[str, sa.Engine],
    options: dict[str, t.Any],
    class_: type[orm.Session],
) -> orm.sessionmaker[orm.Session]:
    """The app's sessionmaker, over a subclass of *class_* (the one class
    of the UnitOfWork's sessions); unknown session options are refused now,
    not mid-request.
    """
    try:
        factory: orm.sessionmaker[orm.Session] = orm.sessionmaker(
            engines["default"], class_=class_, engines=engines, **options
        )
        bind_key_cache(factory)
        factory().close()
    except (TypeError, ValueError, sa_exc.ArgumentError) as e:
        raise session_options_error(e) from e
    return factory
