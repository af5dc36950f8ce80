"""The class of the sessions ``db.session`` gives."""

from __future__ import annotations

from .._engines import RoutingSession


class Session(RoutingSession):
    """The class of the sessions ``db.session`` gives: flask_uow's session,
    which sends each statement to the engine of its table's bind key and
    takes part in the unit of work. A class given as
    ``session_options={"class_": ...}`` must subclass it.
    """
