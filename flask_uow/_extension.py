"""The :class:`UnitOfWork` extension: configuration, per-app state, session access."""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import types
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import current_app
from flask import Flask
from flask import has_app_context

from ._engines import create_engines
from ._engines import RoutingSession
from ._lifecycle import CommitVeto
from ._lifecycle import default_commit_veto
from ._lifecycle import install
from ._lifecycle import State
from ._lifecycle import Unit

P = t.ParamSpec("P")
R = t.TypeVar("R")

_NO_APP_CONTEXT = (
    "Working outside of application context: flask_uow needs to know which app's"
    " database to use. Use it inside a request or a CLI command, or push a"
    " context with 'with app.app_context():'."
)

_RESERVED_SESSION_OPTIONS = {
    "bind": "the 'default' entry of 'UOW_ENGINES' is the session's bind",
    "class_": "flask_uow's session class routes statements by bind key",
}


def _dispose_engines(engines: cabc.Iterable[sa.Engine]) -> None:
    for engine in engines:
        engine.dispose()


class UnitOfWork:
    """Make each request of a Flask app one unit of work over a SQLAlchemy
    session.

    The session is created when a view first uses :attr:`session`. When the
    request succeeds its work is committed before the response leaves the app;
    when anything fails it is rolled back. Outside requests, each application
    context gets its own session and nothing is committed implicitly.

    One instance can serve several apps; all state is kept per app, so the
    instance never holds an app.

    :param app: Call :meth:`init_app` on this app now.

    .. versionadded:: 0.1
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._states: weakref.WeakKeyDictionary[Flask, State] = (
            weakref.WeakKeyDictionary()
        )
        self._commit_veto: CommitVeto = default_commit_veto
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
        :raise ValueError: A URL or an engine or session option is invalid.
        """
        if "uow" in app.extensions:
            raise RuntimeError(
                f"The app {app.name!r} is already set up with a 'UnitOfWork'"
                " ('init_app' was called twice). Call 'init_app' once per app and"
                " use app.extensions['uow'] to reach the instance."
            )
        app.config.setdefault("UOW_SESSION_OPTIONS", {})
        app.config.setdefault("UOW_AUTOCOMMIT", True)
        autocommit = app.config["UOW_AUTOCOMMIT"]
        if not isinstance(autocommit, bool):
            raise TypeError(
                "'UOW_AUTOCOMMIT' must be True or False, not"
                f" {type(autocommit).__name__!r}."
            )
        options = _session_options(app.config["UOW_SESSION_OPTIONS"])
        engines = create_engines(app.config.get("UOW_ENGINES"), app.instance_path)
        try:
            factory: orm.sessionmaker[orm.Session] = orm.sessionmaker(
                engines["default"], class_=RoutingSession, engines=engines, **options
            )
            factory().close()  # Reject unknown session options now, not mid-request.
        except TypeError as e:
            _dispose_engines(engines.values())
            raise TypeError(
                f"'UOW_SESSION_OPTIONS' has an option the session does not accept:"
                f" {e}. Use only keyword arguments of 'sqlalchemy.orm.Session'."
            ) from e
        state = State(engines, factory, autocommit, lambda: self._commit_veto)
        install(app, state)
        self._states[app] = state
        app.extensions["uow"] = self
        weakref.finalize(app, _dispose_engines, list(engines.values()))

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
    def engine(self) -> sa.Engine:
        """The current app's ``"default"`` engine."""
        return self._state()[1].engines["default"]

    def dispose_engines(self, app: Flask | None = None) -> None:
        """Close every pooled connection of the app's engines.

        This also happens when the app is garbage collected. Call it when an app
        is shut down explicitly, or in a forked worker before first use. The
        engines stay usable; they open new connections when needed.

        :param app: The app; the current app if not given.
        """
        _dispose_engines(self._state(app)[1].engines.values())

    def mark_rollback_only(self) -> None:
        """Make the current unit of work roll back at its end instead of
        committing, without raising an exception.

        :raise RuntimeError: There is no application context.
        """
        self._unit().rollback_only = True

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


def _session_options(value: t.Any) -> dict[str, t.Any]:
    if not isinstance(value, cabc.Mapping):
        raise TypeError(
            "'UOW_SESSION_OPTIONS' must be a dict of 'sqlalchemy.orm.Session'"
            f" keyword arguments, not {type(value).__name__!r}."
        )
    for name, reason in _RESERVED_SESSION_OPTIONS.items():
        if name in value:
            raise ValueError(
                f"'UOW_SESSION_OPTIONS' must not set {name!r}: {reason}. Remove"
                " it, and configure engines in 'UOW_ENGINES'."
            )
    return dict(value)
