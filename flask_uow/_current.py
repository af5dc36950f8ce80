"""``uow.session``: one object per :class:`~flask_uow.UnitOfWork`, taken at
import time and handed to anything, that is the current unit's session each
time it is used.

It is a :class:`sqlalchemy.orm.scoped_session` whose scope is the unit of
work: SQLAlchemy, and every extension written for Flask-SQLAlchemy's
``db.session``, know how to use one. Its registry is not a dictionary of
sessions but the units themselves (``_state.State``), so that it can never
bypass a unit, a request's commit decision or test isolation.

Every app's sessionmaker makes its sessions from a subclass of one class per
:class:`~flask_uow.UnitOfWork` (:attr:`CurrentSession.session_factory`'s
``class_``), so a listener attached with ``sa.event.listen(uow.session, ...)``
at import time reaches the sessions of every app set up later.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy.orm as orm
from flask import Flask

from ._engines import RoutingSession
from ._lifecycle import end_unit
from ._state import _NO_APP_CONTEXT
from ._state import app_context
from ._state import context_store
from ._state import current_app_and_state
from ._state import request_context
from ._state import State
from ._state import unknown_app

if t.TYPE_CHECKING:
    from ._unit import Unit


class CurrentSession(orm.scoped_session[orm.Session]):
    """The session of the current unit of work, as a
    :class:`~sqlalchemy.orm.scoped_session`: :attr:`UnitOfWork.session
    <flask_uow.UnitOfWork.session>`.

    Every method and attribute of :class:`~sqlalchemy.orm.Session` used on it
    (``uow.session.execute(...)``, ``uow.session.add(...)``, ``.info``...) is
    the one of the current unit's session: the current request's, or outside
    requests the current application context's, created on first use. Calling
    it, ``uow.session()``, returns that session itself.

    With no application context it raises ``RuntimeError`` ("Working outside
    of application context"), as it does for an app that is not set up with
    this :class:`~flask_uow.UnitOfWork`.

    .. versionadded:: 0.1
    """

    def __init__(self, states: cabc.Mapping[Flask, State]) -> None:
        # Not scoped_session.__init__: the scope is the unit of work, not a
        # thread or a scopefunc.
        self._uow_states = states
        #: A sessionmaker of the class every app's sessions are made from
        #: (a subclass of it per app); what ``sa.event.listen(uow.session,
        #: ...)`` listens to. It makes no session of its own.
        self.session_factory = orm.sessionmaker(class_=RoutingSession)
        self.registry = _Registry(self)  # type: ignore[assignment]

    @property
    def session_class(self) -> type[orm.Session]:
        """The class each app's session class derives from."""
        return self.session_factory.class_

    @property
    def _proxied(self) -> orm.Session:
        # The hot path: every use of uow.session in a view goes through here.
        ctx = app_context()
        if ctx is not None:
            app = ctx.app
            state = self._uow_states.get(app)
            if state is not None:
                rctx = request_context()
                if rctx is not None and rctx.app is app:
                    unit = rctx.request.environ.get(state.key)
                    if unit is not None and unit.session is not None:
                        return unit.session  # type: ignore[no-any-return]
                return state.session(app)
            raise unknown_app(app)
        raise RuntimeError(_NO_APP_CONTEXT)

    def __call__(self, **kw: t.Any) -> orm.Session:
        """The current unit's session, created if it has none yet.

        :raise TypeError: Keyword arguments were given.
        :raise RuntimeError: There is no application context.
        """
        if kw:
            raise TypeError(
                "'uow.session()' takes no arguments: every session of a unit of"
                " work is made with the app's 'UOW_SESSION_OPTIONS'. Set the"
                " options there."
            )
        return self._proxied

    def remove(self) -> None:
        """End the current unit's session: roll back what it has not
        committed and close it. The next use of ``uow.session`` in the same
        request or application context makes a new session (in a request,
        one that the request still commits or rolls back at its end).

        Nothing happens when the unit has no session.

        :raise RuntimeError: There is no application context, or a
            ``uow.transaction()`` block is open.
        """
        app, state = current_app_and_state(self._uow_states)
        unit = state.peek(app)
        if unit is None or unit.session is None:
            return
        if unit.frames:
            raise RuntimeError(
                "'uow.session.remove()' was called inside a 'uow.transaction()'"
                " block or a '@uow.transactional' function, where it would end"
                " the block's transaction behind its back. Call it after the"
                " block."
            )
        environ = unit.environ
        if environ is not None:
            end_unit(app, state, environ, unit)
            environ[state.key] = None  # The request makes a new unit if needed.
        else:
            end_unit(app, state, context_store(), unit)

    def configure(self, **kwargs: t.Any) -> None:
        """Refused: the sessions of a unit of work are configured per app.

        :raise RuntimeError: Always.
        """
        raise RuntimeError(
            "'uow.session.configure()' cannot change the sessions of a unit of"
            " work. Set the session options in the app's 'UOW_SESSION_OPTIONS'"
            " before 'init_app'."
        )

    # What scoped_session does not proxy, and a unit of work's user needs.

    def in_transaction(self) -> bool:
        """:meth:`Session.in_transaction <sqlalchemy.orm.Session.in_transaction>`
        of the current unit's session.
        """
        return self._proxied.in_transaction()

    def in_nested_transaction(self) -> bool:
        """:meth:`Session.in_nested_transaction
        <sqlalchemy.orm.Session.in_nested_transaction>` of the current unit's
        session.
        """
        return self._proxied.in_nested_transaction()

    def get_transaction(self) -> orm.SessionTransaction | None:
        """:meth:`Session.get_transaction
        <sqlalchemy.orm.Session.get_transaction>` of the current unit's session.
        """
        return self._proxied.get_transaction()

    def get_nested_transaction(self) -> orm.SessionTransaction | None:
        """:meth:`Session.get_nested_transaction
        <sqlalchemy.orm.Session.get_nested_transaction>` of the current unit's
        session.
        """
        return self._proxied.get_nested_transaction()

    def enable_relationship_loading(self, obj: object) -> None:
        """:meth:`Session.enable_relationship_loading
        <sqlalchemy.orm.Session.enable_relationship_loading>` on the current
        unit's session.
        """
        self._proxied.enable_relationship_loading(obj)

    @property
    def expire_on_commit(self) -> bool:
        """``expire_on_commit`` of the current unit's session (settable)."""
        return self._proxied.expire_on_commit

    @expire_on_commit.setter
    def expire_on_commit(self, value: bool) -> None:
        self._proxied.expire_on_commit = value

    def _current_unit(self) -> Unit | None:
        ctx = app_context()
        if ctx is None:
            return None
        state = self._uow_states.get(ctx.app)
        return None if state is None else state.peek(ctx.app)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: the session of the current unit of work>"


class _Registry:
    """What ``scoped_session`` calls its registry, over the units of work:
    calling it gives the current unit's session, ``has()`` tells whether the
    current unit has one, ``clear()`` ends it.
    """

    def __init__(self, current: CurrentSession) -> None:
        self._current = current

    def __call__(self) -> orm.Session:
        return self._current._proxied

    def has(self) -> bool:
        """Whether the current unit of work has a session (``False`` with no
        application context).
        """
        unit = self._current._current_unit()
        return unit is not None and unit.session is not None

    def set(self, obj: orm.Session) -> None:
        raise RuntimeError(
            "A session cannot be put in place of a unit of work's session: each"
            " unit makes its own. Use 'uow.session' as it is."
        )

    def clear(self) -> None:
        self._current.remove()
