"""Notifications about transfers, sent only once a transfer is committed.

A real app would send an email or enqueue a task; the ledger logs the message
and keeps it in an outbox that its tests can read.
"""

from __future__ import annotations

from flask import current_app


def outbox() -> list[str]:
    """The notifications the current app has sent, oldest first."""
    return current_app.extensions.setdefault("ledger.outbox", [])  # type: ignore[no-any-return]


def send(message: str) -> None:
    """Send one notification."""
    current_app.logger.info("notification: %s", message)
    outbox().append(message)
