"""Signals that re-emit the life of a unit of work's session.

Each is sent with the Flask app as sender, so ``signal.connect_via(app)``
receives one app's signals only. Payloads are keyword arguments; receivers
should accept ``**extra`` so that new keywords do not break them. Nothing is
collected or built for a signal that has no receiver.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A database transaction began on a connection: once per connection per
#: transaction. Keywords: ``session``, ``connection``, ``engine`` (its name in
#: ``UOW_ENGINES``) and ``role`` (``"primary"``, or ``"replica"`` for a read
#: replica).
after_begin = _signals.signal("flask-uow.after-begin")

#: The outermost transaction is about to COMMIT, after its final flush.
#: Keywords: ``session``, ``changes`` (a list of :class:`~flask_uow.Change`).
#: A receiver may add objects, which are flushed and committed in the same
#: transaction; one that raises aborts the commit.
before_commit = _signals.signal("flask-uow.before-commit")

#: The outermost transaction committed. Keywords: ``session``, ``changes``.
#: A receiver that raises is logged; the commit stands.
after_commit = _signals.signal("flask-uow.after-commit")

#: The outermost database transaction rolled back (not a savepoint, and not
#: when no transaction began). Keywords: ``session``.
after_rollback = _signals.signal("flask-uow.after-rollback")

#: A ``transactional(retries=...)`` function is about to be run again.
#: Keywords: ``session``, ``exception``, ``attempt`` (1 for the first retry).
before_retry = _signals.signal("flask-uow.before-retry")
