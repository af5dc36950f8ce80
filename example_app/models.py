"""The ledger's tables: accounts (ORM) and the entries of each transfer (Core)."""

from __future__ import annotations

import datetime

import sqlalchemy as sa
import sqlalchemy.orm as orm


class Base(orm.DeclarativeBase):
    pass


class Account(Base):
    """An account; ``balance`` is in cents and may not go below zero."""

    __tablename__ = "accounts"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(80), unique=True)
    balance: orm.Mapped[int] = orm.mapped_column(default=0)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "balance": self.balance}


#: One row per account touched by a transfer (a Core table, no ORM class).
entries = sa.Table(
    "entries",
    Base.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        nullable=False,
        default=lambda: datetime.datetime.now(datetime.timezone.utc),
    ),
)


#: One row per notification a background task delivered (with
#: ``LEDGER_TASKS_BROKER`` set): written in the task's own unit of work under
#: ``@uow.once``, so a redelivered task adds nothing.
sent_notifications = sa.Table(
    "sent_notifications",
    Base.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("message", sa.String(200), nullable=False),
)
