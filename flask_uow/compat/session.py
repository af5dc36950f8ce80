"""The session class of ``db.session``, and the ``db.session`` object."""

from __future__ import annotations

import typing as t

import sqlalchemy.orm as orm

from .._engines import RoutingSession

if t.TYPE_CHECKING:
    from .extension import SQLAlchemy


class Session(RoutingSession):
    """The class of the sessions ``db.session`` gives: flask_uow's session,
    which sends each statement to the engine of its table's bind key and
    takes part in the unit of work. A class given as
    ``session_options={"class_": ...}`` must subclass it.
    """


class SessionProxy:
    """``db.session``: it can be taken at import time and handed to anything,
    and resolves to the current unit of work's session each time it is used.

    Calling it returns that session; :meth:`remove` closes it.
    """

    def __init__(self, db: SQLAlchemy) -> None:
        object.__setattr__(self, "_db", db)

    def __call__(self) -> orm.Session:
        """The current unit of work's session.

        :raise RuntimeError: There is no application context.
        """
        session: orm.Session = self._db.uow.session
        return session

    def remove(self) -> None:
        """Close the current unit of work's session: its objects are
        detached, its transaction rolled back; the next use starts afresh.
        """
        self._db.uow.session.close()

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._db.uow.session, name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        setattr(self._db.uow.session, name, value)

    def __contains__(self, instance: object) -> bool:
        return instance in self._db.uow.session

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self._db.uow.session)
