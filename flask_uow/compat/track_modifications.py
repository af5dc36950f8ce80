"""Flask-SQLAlchemy's modification signals, sent when
``SQLALCHEMY_TRACK_MODIFICATIONS`` is on, from flask_uow's
:data:`~flask_uow.signals.before_commit` and
:data:`~flask_uow.signals.after_commit`.
"""

from __future__ import annotations

import typing as t

from blinker import Namespace
from flask import Flask

from .. import signals

_signals = Namespace()

#: Sent before a commit with ``changes``: a list of ``(object, operation)``,
#: the operation being ``"insert"``, ``"update"`` or ``"delete"``.
before_models_committed = _signals.signal("models-committed-before")
#: Sent after a commit, with the same ``changes``.
models_committed = _signals.signal("models-committed")


def _pairs(changes: list[t.Any]) -> list[tuple[t.Any, str]]:
    return [(c.instance, c.operation) for c in changes if c.instance is not None]


def _before(sender: Flask, changes: list[t.Any], **extra: t.Any) -> None:
    if before_models_committed.receivers:
        before_models_committed.send(sender, changes=_pairs(changes))


def _after(sender: Flask, changes: list[t.Any], **extra: t.Any) -> None:
    if models_committed.receivers:
        models_committed.send(sender, changes=_pairs(changes))


def _listen(app: Flask) -> None:
    """Translate *app*'s commit signals. The receivers are module functions
    and never refer to the app, which the signals hold weakly.
    """
    signals.before_commit.connect(_before, app, weak=False)
    signals.after_commit.connect(_after, app, weak=False)
