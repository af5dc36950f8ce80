"""Where an app's units of work live, and the seam capabilities attach to.

Each app set up with a :class:`~flask_uow.UnitOfWork` has one :class:`State`:
its engines, the sessionmaker its sessions come from, and two lists of
hooks, the only moments of a unit of work that the core announces:

``opened``
    ``hook(unit, session)``, right after a unit's session was made. Read
    replicas give the session its route here, SQLite its begin mode, test
    isolation notes the unit so that it can close it.
``ended``
    ``hook(unit)``, right after a unit ended and its session was closed.
``blocks``
    ``hook(unit)``, when an outermost transaction block begins; it returns a
    watch that is told how each try ends (telemetry).

What a session is made with is :attr:`State.options`, the keyword
arguments the core passes to the sessionmaker; test isolation swaps them
for a binding to its own connections, invisibly to the request path. A
capability that needs more attaches where Flask and SQLAlchemy let anyone
attach: request hooks, the app's sessionmaker's and engines' events. The core
never names a capability.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import itertools
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import Response
from flask.globals import _cv_app
from flask.globals import _cv_request

from ._unit import BlockWatch
from ._unit import Unit

if t.TYPE_CHECKING:
    from flask.ctx import AppContext
    from flask.ctx import RequestContext

#: The current request context and application context, or ``None``. Flask
#: has no public way to ask which app they belong to, and its proxies cost
#: several calls per use on a path every request takes: flask_uow reads
#: Flask's two context variables, and only through these two names.
#: ``tests/test_flask_contract.py`` fails loudly if Flask changes them.
request_context: cabc.Callable[[], RequestContext | None] = functools.partial(
    _cv_request.get, None
)
app_context: cabc.Callable[[], AppContext | None] = functools.partial(_cv_app.get, None)

CommitVeto = cabc.Callable[[Response], bool]
RetryClassifier = cabc.Callable[[BaseException], bool]
OpenedHook = cabc.Callable[[Unit, orm.Session], None]
EndedHook = cabc.Callable[[Unit], None]
BlockHook = cabc.Callable[[Unit], BlockWatch]

_state_numbers = itertools.count(1)
_NO_APP_CONTEXT = (
    "Working outside of application context: flask_uow needs to know which app's"
    " database to use. Use it inside a request or a CLI command, or push a"
    " context with 'with app.app_context():'."
)


class Policy(t.Protocol):
    """What a :class:`State` asks of the extension it belongs to: the
    functions registered on it, which may change after ``init_app``.
    """

    _commit_veto: CommitVeto
    _retry_classifier: RetryClassifier


class State:
    """What one :class:`~flask_uow.UnitOfWork` keeps for one app."""

    def __init__(
        self,
        engines: dict[str, sa.Engine],
        factory: orm.sessionmaker[orm.Session],
        config: cabc.Mapping[str, t.Any],
        policy: Policy,
    ) -> None:
        self.engines = engines
        self.factory = factory
        self.autocommit: bool = config["UOW_AUTOCOMMIT"]
        self.retry_delay: float = config["UOW_RETRY_DELAY"]
        self.max_delay: float = config["UOW_RETRY_MAX_DELAY"]
        self.policy = policy
        #: The name of this app's unit in a store: the request's WSGI
        #: environ, or the attributes of an application context's ``g``.
        self.key = f"flask_uow.unit.{next(_state_numbers)}"
        #: The keyword arguments every session is made with.
        self.options: dict[str, t.Any] = {}
        self.opened: list[OpenedHook] = []
        self.ended: list[EndedHook] = []
        #: ``hook(unit)`` when an outermost transaction begins (its first
        #: try), returning what watches it; see ``_transaction``.
        self.blocks: list[BlockHook] = []
        #: How many units of the app have an open session.
        self.live = 0

    def unit(self, app: Flask) -> Unit:
        """The current unit of work of *app*, created if there is none yet.

        While *app* handles a request (its ``wsgi_app`` was called), the unit
        is kept in the request's WSGI environ, so every request gets its own
        unit even when a test pushed one app context for several requests.
        Elsewhere (CLI commands, jobs, shell, a context of *app* pushed inside
        another app's request, or a request context that is pushed but not
        handled, as pytest-flask's or ``app.test_request_context()``'s) it is
        kept in the application context's ``g``, so each application context
        gets its own unit.
        """
        ctx = request_context()
        if ctx is not None and ctx.app is app:
            environ = ctx.request.environ
            key = self.key
            if key in environ:
                unit = environ[key]
                if unit is None:
                    unit = environ[key] = Unit(environ)
                return t.cast(Unit, unit)
        store = context_store()
        unit = store.get(self.key)
        if unit is None:
            unit = store[self.key] = Unit()
        return t.cast(Unit, unit)

    def session(self, app: Flask) -> orm.Session:
        """The current unit's session, made on first use."""
        unit = self.unit(app)
        session = unit.session
        if session is None:
            session = self.open(unit)
        return session

    def open(self, unit: Unit) -> orm.Session:
        """Make *unit*'s session and announce it to the ``opened`` hooks."""
        session = unit.session = self.factory(uow_unit=unit, **self.options)
        self.live += 1
        for hook in self.opened:
            hook(unit, session)
        return session

    def peek(self, app: Flask) -> Unit | None:
        """The current unit of work of *app*, without creating one."""
        ctx = request_context()
        if ctx is not None and ctx.app is app:
            environ = ctx.request.environ
            if self.key in environ:
                return t.cast("Unit | None", environ[self.key])
        actx = app_context()
        if actx is None:
            return None
        return t.cast("Unit | None", actx.g.__dict__.get(self.key))


def context_store() -> dict[str, t.Any]:
    """The attributes of the current application context's ``g``."""
    ctx = app_context()
    if ctx is None:
        raise RuntimeError(_NO_APP_CONTEXT)
    return ctx.g.__dict__


def current_app_and_state(
    states: cabc.Mapping[Flask, State], app: Flask | None = None
) -> tuple[Flask, State]:
    """*app*, or the current app, with its state in *states*.

    :raise RuntimeError: There is no application context, or the app is not
        in *states*.
    """
    if app is None:
        ctx = app_context()
        if ctx is None:
            raise RuntimeError(_NO_APP_CONTEXT)
        app = ctx.app
    state = states.get(app)
    if state is None:
        raise unknown_app(app)
    return app, state


def unknown_app(app: Flask) -> RuntimeError:
    """The error for an app that a :class:`~flask_uow.UnitOfWork` does not
    know.
    """
    return RuntimeError(
        f"The app {app.name!r} is not set up with this 'UnitOfWork'. Call"
        " 'uow.init_app(app)' in the app factory before using it."
    )
