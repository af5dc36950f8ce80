"""An audit log written in the same transaction as the changes it records."""

from __future__ import annotations

import datetime
import json
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import has_request_context
from flask import request

from flask_uow import before_commit
from flask_uow import Change

from .models import Base

#: One row per changed row: who, what, and the old and new values.
audit_log = sa.Table(
    "audit_log",
    Base.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(80), nullable=False),
    sa.Column("operation", sa.String(10), nullable=False),
    sa.Column("table_name", sa.String(80), nullable=False),
    sa.Column("row_id", sa.String(80)),
    sa.Column("changes", sa.Text, nullable=False),
)


def _actor() -> str:
    if has_request_context():
        return request.headers.get("X-User", "anonymous")
    return "system"


def write_audit_log(
    sender: Flask, *, session: orm.Session, changes: list[Change], **extra: t.Any
) -> None:
    """``before_commit`` receiver: add an audit row for each change. The rows
    are flushed and committed with the changes, or not at all.
    """
    rows = [
        {
            "at": datetime.datetime.now(datetime.timezone.utc),
            "actor": _actor(),
            "operation": change.operation,
            "table_name": change.table,
            "row_id": None if change.identity is None else str(change.identity[0]),
            "changes": json.dumps(
                {k: [old, new] for k, (old, new) in change.attributes.items()},
                default=str,
            ),
        }
        for change in changes
        if change.table != audit_log.name
    ]
    if rows:
        session.execute(sa.insert(audit_log), rows)


def init_app(app: Flask) -> None:
    """Audit every commit of *app*."""
    before_commit.connect(write_audit_log, app, weak=False)
