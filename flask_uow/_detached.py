"""Writes to objects of a unit of work that has ended: warned about, or
refused, instead of being silently lost.

When a unit ends, its session is closed and the objects it loaded become
detached: they stay readable, but a change made to one later is saved by
nothing. The usual way to get there is an object kept across requests, such
as the user Flask-Login caches in ``g`` of the application context a test
pushed, changed by a later request of the same test.

With ``UOW_DETACHED_WRITES`` on (``"warn"``, the default in debug and testing
mode, or ``"raise"``), the app's sessionmaker marks each object detached by
the end of its unit, and the attributes of its class get listeners that warn
or raise when a marked, still detached object is changed. Off, nothing is
attached anywhere.
"""

from __future__ import annotations

import sys
import typing as t
import warnings

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

if t.TYPE_CHECKING:
    from ._state import State

MODES = ("warn", "raise", "off")
#: The key of a detached object's ``InstanceState.info``: the mode of the app
#: whose unit ended.
_ENDED = "flask_uow.unit_ended"
#: The mappers whose attributes have the listeners.
_instrumented: set[orm.Mapper[t.Any]] = set()


class DetachedWriteWarning(UserWarning):
    """Warned when an attribute of an object whose unit of work has ended is
    set (see :data:`UOW_DETACHED_WRITES`): the change would be saved by
    nothing. The message names the object, the attribute and the fix.

    .. versionadded:: 0.1
    """


def read_mode(app: Flask) -> str:
    """Set the default of ``UOW_DETACHED_WRITES`` and check it."""
    default = "warn" if app.debug or app.testing else "off"
    mode = app.config.setdefault("UOW_DETACHED_WRITES", default)
    if mode not in MODES:
        raise ValueError(
            f"'UOW_DETACHED_WRITES' must be 'warn', 'raise' or 'off', not"
            f" {mode!r}. Use 'raise' in test suites to fail on a change made to"
            " an object whose unit of work has ended."
        )
    return t.cast(str, mode)


def install(state: State, mode: str) -> None:
    """Mark the objects detached by the end of the app's units; nothing when
    *mode* is ``"off"``.
    """
    if mode == "off":
        return

    def detached(session: orm.Session, instance: object) -> None:
        unit = getattr(session, "uow_unit", None)
        if unit is not None and unit.session is session:
            return  # Expunged while the unit goes on: the app chose to.
        instance_state = sa.inspect(instance)
        instance_state.info[_ENDED] = mode
        mapper = instance_state.mapper
        if mapper not in _instrumented:
            _instrument(mapper)

    sa.event.listen(state.factory, "persistent_to_detached", detached)
    sa.event.listen(state.factory, "detached_to_persistent", _attached)


def _attached(session: orm.Session, instance: object) -> None:
    sa.inspect(instance).info.pop(_ENDED, None)


def _instrument(mapper: orm.Mapper[t.Any]) -> None:
    """Listen to the changes of every attribute of *mapper*'s class."""
    _instrumented.add(mapper)
    manager = mapper.class_manager
    for prop in mapper.column_attrs:
        sa.event.listen(manager[prop.key], "set", _check(prop.key))
    for rel in mapper.relationships:
        check = _check(rel.key)
        attribute = manager[rel.key]
        if rel.uselist:
            sa.event.listen(attribute, "append", check)
            sa.event.listen(attribute, "remove", check)
        else:
            sa.event.listen(attribute, "set", check)


def _check(key: str) -> t.Callable[..., None]:
    def check(target: object, *args: t.Any) -> None:
        instance_state = sa.inspect(target)
        if instance_state.session_id is not None or instance_state.key is None:
            return
        mode = instance_state.info.get(_ENDED)
        if mode is not None:
            _report(mode, target, key)

    return check


def _report(mode: str, target: object, key: str) -> None:
    cls = type(target).__name__
    message = (
        f"{key!r} of {target!r} was set after the unit of work that loaded the"
        " object ended, so nothing would save the change: the object is"
        f" detached. Load it in the current unit (uow.session.get({cls}, ...))"
        " or attach it with 'obj = uow.session.merge(obj)' before changing it."
    )
    if mode == "raise":
        raise RuntimeError(message)
    warnings.warn(message, DetachedWriteWarning, stacklevel=_outside_level())


def _outside_level() -> int:
    """The ``stacklevel`` of the first frame outside SQLAlchemy and
    flask_uow: the line that set the attribute.
    """
    frame = sys._getframe(1)  # _report
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("sqlalchemy.", "flask_uow.")
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
