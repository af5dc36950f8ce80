"""Notifications about transfers, sent only once a transfer is committed.

A real app would send an email or enqueue a task; the ledger logs the message
and keeps it in an outbox that its tests can read. With ``LEDGER_OUTBOX_FILE``
set, it also appends the message as a line to that file, which every process
of the app shares (a load test reads it).
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
    path = current_app.config.get("LEDGER_OUTBOX_FILE")
    if path:
        # One write of one line in append mode: lines from several processes
        # do not interleave.
        with open(path, "a", encoding="utf-8") as f:
            f.write(message + "\n")
