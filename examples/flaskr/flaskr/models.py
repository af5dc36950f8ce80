from __future__ import annotations

from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import url_for
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash


def now():
    return datetime.now(timezone.utc)


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    # Flask-SQLAlchemy named the table "user" from the class name; the
    # ForeignKey("user.id") below depends on it, so it is written out.
    __tablename__ = "user"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    username: orm.Mapped[str] = orm.mapped_column(sa.String(80), unique=True)
    password_hash: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    posts: orm.Mapped[list[Post]] = orm.relationship(back_populates="author")

    def set_password(self, value):
        self.password_hash = generate_password_hash(value)

    def check_password(self, value):
        return check_password_hash(self.password_hash, value)


class Post(Base):
    __tablename__ = "post"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    author_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("user.id"))
    author: orm.Mapped[User] = orm.relationship(lazy="joined", back_populates="posts")
    created: orm.Mapped[datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), default=now
    )
    title: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    body: orm.Mapped[str] = orm.mapped_column(sa.Text)

    @property
    def update_url(self):
        return url_for("blog.update", id=self.id)

    @property
    def delete_url(self):
        return url_for("blog.delete", id=self.id)
