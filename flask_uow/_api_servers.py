"""The methods of :class:`~flask_uow.UnitOfWork` for several servers: read
replicas, and the recovery of two-phase commits.
"""

from __future__ import annotations

import collections.abc as cabc
import types
import typing as t
import weakref

import sqlalchemy as sa
from flask import Flask

from ._recovery import recover
from ._recovery import Resolution
from ._replicas import PRIMARY_MARK
from ._replicas import Replicas
from ._state import State
from ._twophase import Coordinator

P = t.ParamSpec("P")
R = t.TypeVar("R")


class ServerMethods:
    """Read replicas and two-phase commit recovery."""

    _replicas: weakref.WeakKeyDictionary[Flask, Replicas]
    _coordinators: weakref.WeakKeyDictionary[Flask, Coordinator]

    if t.TYPE_CHECKING:

        def _state(self, app: Flask | None = None) -> tuple[Flask, State]: ...

    @property
    def replica_engines(self) -> cabc.Mapping[str, tuple[sa.Engine, ...]]:
        """The current app's read replica engines, by the name of the engine
        they replicate (read-only; engines without replicas are absent). See
        :doc:`/replicas`.

        .. versionadded:: 0.1
        """
        replicas = self._replicas.get(self._state()[0])
        if replicas is None:
            return types.MappingProxyType({})
        return types.MappingProxyType(
            {
                group.name: tuple(r.engine for r in group.replicas)
                for group in replicas.groups.values()
            }
        )

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

        A database that cannot be reached does not stop the others: every
        prepared transaction that can be reached is settled first, then
        :class:`~flask_uow.RecoveryIncompleteError` lists the unreachable
        engines and carries what was settled. With the ``"default"`` engine
        unreachable, nothing is settled.

        :param app: The app; the current app if not given.
        :param dry_run: Only report what would be done.
        :return: What was done with each prepared transaction.
        :raise RuntimeError: ``UOW_TWO_PHASE`` is off for the app.
        :raise RecoveryIncompleteError: A database could not be reached (a
            subclass of ``RuntimeError``).

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
