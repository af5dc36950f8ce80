"""Tables used by the tests."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as orm

metadata = sa.MetaData()


class Base(orm.DeclarativeBase):
    metadata = metadata


class Item(Base):
    """An ORM model with a unique name."""

    __tablename__ = "items"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50), unique=True)


#: A Core table whose UNIQUE constraint is checked only at COMMIT on PostgreSQL
#: (SQLite cannot defer one, so it gets an immediate one).
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.UniqueConstraint("name", deferrable=True, initially="DEFERRED").ddl_if(
        dialect="postgresql"
    ),
    sa.UniqueConstraint("name").ddl_if(dialect="sqlite"),
)


class Counter(Base):
    """A row that concurrent requests increment."""

    __tablename__ = "counters"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    value: orm.Mapped[int] = orm.mapped_column(default=0)


class Parent(Base):
    """An ORM model with a lazily loaded one-to-many relationship."""

    __tablename__ = "parents"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    children: orm.Mapped[list[Child]] = orm.relationship(back_populates="parent")


class Child(Base):
    """The many side of :class:`Parent`."""

    __tablename__ = "children"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    parent_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("parents.id"))
    parent: orm.Mapped[Parent] = orm.relationship(back_populates="children")
