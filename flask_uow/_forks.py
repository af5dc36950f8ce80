"""Engines after a fork: a child process never uses a pooled connection of
its parent.

A server that imports the app before it forks its workers (``gunicorn
--preload``, uWSGI without ``lazy-apps``), or ``multiprocessing`` with the
fork start method, copies the engines' pools into every child, with the
parent's open connections in them. Two processes writing on one socket mix
their protocol messages: statements fail, or a write is committed under
another's answer. So in every child, right after the fork, each engine
flask_uow created forgets its pool without closing it
(``engine.dispose(close=False)``): closing would end the parent's
connections, which are still in use. The child's first unit opens a
connection of its own.

The hook is registered once per process with :func:`os.register_at_fork`;
engines are held weakly, so a disposed app's engines are not kept alive.
Nothing runs per request.
"""

from __future__ import annotations

import os
import threading
import weakref

import sqlalchemy as sa

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_registered = False
_lock = threading.Lock()


def track(engine: sa.Engine) -> None:
    """Give *engine* a fresh pool in every child forked from now on."""
    global _registered
    with _lock:
        _engines.add(engine)
        if not _registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _registered = True


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        # The parent's connections stay open for the parent; the child only
        # drops its copies of them.
        engine.dispose(close=False)
