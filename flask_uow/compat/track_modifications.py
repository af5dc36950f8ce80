"""Flask-SQLAlchemy's modification signals, sent when
``SQLALCHEMY_TRACK_MODIFICATIONS`` is on. The changes are flask_uow's (sent
with :data:`~flask_uow.signals.before_commit`), as ``(object, operation)``
pairs; ``models_committed`` is sent as soon as the commit returned, as
Flask-SQLAlchemy does (flask_uow's own ``after_commit`` waits until the
session may run SQL again).
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from blinker import Namespace
from flask import Flask

from .. import signals
from .session import Session

_signals = Namespace()

#: Sent before a commit with ``changes``: a list of ``(object, operation)``,
#: the operation being ``"insert"``, ``"update"`` or ``"delete"``.
before_models_committed = _signals.signal("models-committed-before")
#: Sent after a commit, with the same ``changes``.
models_committed = _signals.signal("models-committed")

_KEY = "flask_uow.compat.changes"


def _before(
    sender: Flask, session: orm.Session, changes: list[t.Any], **extra: t.Any
) -> None:
    pairs = [(c.instance, c.operation) for c in changes if c.instance is not None]
    session.info[_KEY] = (sender, pairs)
    before_models_committed.send(sender, changes=pairs)


def _after_commit(session: orm.Session) -> None:
    found = session.info.pop(_KEY, None)
    if found is not None:
        app, pairs = found
        models_committed.send(app, changes=pairs)


def _forget(session: orm.Session, *args: t.Any) -> None:
    session.info.pop(_KEY, None)


sa.event.listen(Session, "after_commit", _after_commit)
sa.event.listen(Session, "after_soft_rollback", _forget)


def _listen(app: Flask) -> None:
    """Track *app*'s commits. The receiver is a module function and never
    refers to the app, which the signal holds weakly.
    """
    signals.before_commit.connect(_before, app, weak=False)
