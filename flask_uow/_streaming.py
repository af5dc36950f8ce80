"""Streamed responses: a unit of work that lasts until the response the app
sends is closed, with a safety net for responses that are never closed.
"""

from __future__ import annotations

import functools
import typing as t
import weakref

from flask import Flask
from flask import Response

from ._lifecycle import end_unit
from ._state import request_context
from ._state import State
from ._unit import Unit

_DROPPED = (
    "flask_uow: a streamed response was garbage collected without being"
    " closed while its unit of work held a transaction; it was rolled back and"
    " its connection returned only now. The WSGI server or a middleware dropped"
    " the response iterable without calling its close() method, which PEP 3333"
    " requires; until it is collected, such a response keeps a pool connection"
    " checked out."
)


def install(app: Flask, state: State) -> None:
    """Make a unit of work whose request sends a streamed response end when
    that response is closed; every other unit ends at teardown.

    The decision is made on the response the app finally sends, after every
    ``after_request`` function ran: one registered before ``init_app`` runs
    after the end-of-request commit and may raise or return another response.
    Flask offers no hook after the last of them but ``process_response``,
    which it calls for each response it finalizes (again for the error
    response when an ``after_request`` function raised). It is documented as
    overridable; it is wrapped on the app instance here, in this one place,
    and ``tests/test_flask_contract.py`` fails loudly if Flask changes it.
    """
    original = app.process_response
    key = state.key

    def process_response(response: Response) -> Response:
        response = original(response)
        ctx = request_context()
        if ctx is not None:
            environ = ctx.request.environ
            unit: Unit | None = environ[key] if key in environ else None
            if unit is not None:
                if unit.held is not None:
                    # Only the last response finalized counts: an earlier
                    # one was not sent (a request_finished receiver raised).
                    forget_stream(unit)
                if (
                    unit.session is not None
                    and type(response.response) is not list  # Streamed, or may be.
                    and response.is_streamed
                ):
                    unit.held = end_with(app, state, unit, response)
        return response

    app.process_response = process_response  # type: ignore[method-assign]


def forget_stream(unit: Unit) -> None:
    """Undo a decision made on a response that will not be sent."""
    unit.held.detach()
    unit.held = None


def end_with(
    app: Flask, state: State, unit: Unit, response: Response
) -> weakref.finalize[..., None]:
    """End the unit of work kept in *store* when *response* is closed, or, if
    it never is, when the server lets go of the response's body.

    The safety net watches the body rather than the response: a response with
    ``direct_passthrough`` hands its body to the server without the response
    around it. Each end runs once: whichever comes first detaches the other.
    """
    body: t.Any = response.response
    try:
        net = weakref.finalize(body, end_dropped, app, state, unit)
    except TypeError:  # A body that cannot be weakly referenced, such as iter([]).
        net = weakref.finalize(response, end_dropped, app, state, unit)
    net.atexit = False  # At exit the pools are going away anyway.
    response.call_on_close(functools.partial(end_closed, app, state, unit, net))
    return net


def end_closed(
    app: Flask, state: State, unit: Unit, net: weakref.finalize[..., None]
) -> None:
    """The server closed the response: end the unit, unless already ended."""
    if net.detach() is not None:
        end_held(app, state, unit)


def end_held(app: Flask, state: State, unit: Unit) -> None:
    """End a unit that its streamed response held open past its request."""
    unit.held = None
    with app.app_context():
        end_unit(app, state, t.cast("dict[str, t.Any]", unit.environ), unit)


def end_dropped(app: Flask, state: State, unit: Unit) -> None:
    """The response was collected unclosed: end the unit, with a warning when
    that returned a connection (a response that got no further than the
    end-of-request commit holds none). Runs in the garbage collector, wherever
    it happens to run, so it never raises.
    """
    try:
        if unit.session is not None and unit.session.in_transaction():
            app.logger.warning(_DROPPED)
        end_held(app, state, unit)
    except Exception:  # pragma: no cover - close_unit itself never raises
        app.logger.exception("flask_uow: ending a dropped streamed response failed.")
