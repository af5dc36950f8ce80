"""Apps for the extension tests, set up the two ways a user switches:

- ``"compat"``: the extension's documented Flask-SQLAlchemy setup, with
  ``from flask_uow.compat import SQLAlchemy`` as the only change, and
  ``db.session`` handed to the extension before the app exists;
- ``"native"``: ``UnitOfWork`` with ``uow.session`` taken at import time (before
  ``init_app``, outside any application context) and handed over the same way.

The environment variable ``FLASK_UOW_COMPAT_MODULE`` (``flask_uow.compat``
unless set) names the module ``SQLAlchemy`` is imported from in compat mode;
setting it to ``flask_sqlalchemy`` runs the same tests on the real
Flask-SQLAlchemy, to check that they test its documented setup.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import UnitOfWork

MODES = ["compat", "native"]


@dataclasses.dataclass
class Setup:
    """One app and what an extension is handed at setup time."""

    app: Flask
    #: ``db`` (compat) or ``uow`` (native).
    ext: t.Any
    #: ``db.session`` or ``uow.session``, taken before the app was created.
    session: t.Any
    #: The model class: ``id``, unique ``email``, ``name``, ``active``.
    User: type[t.Any]
    #: The declarative base of the models (``db.Model`` in compat mode).
    Base: type[t.Any]
    #: Models the test module declared with :func:`declare`, by name.
    models: dict[str, type[t.Any]]


ModelHook = t.Callable[[t.Any, type[t.Any]], dict[str, type[t.Any]]]


def compat_module() -> t.Any:
    """The module compat mode imports ``SQLAlchemy`` from."""
    return importlib.import_module(
        os.environ.get("FLASK_UOW_COMPAT_MODULE", "flask_uow.compat")
    )


def make_setup(
    mode: str,
    url: str,
    tmp_path: pathlib.Path,
    prefix: str,
    *,
    before_app: t.Callable[[t.Any, type[t.Any], t.Any], None] | None = None,
    more_models: ModelHook | None = None,
    config: dict[str, t.Any] | None = None,
) -> Setup:
    """Declare a ``User`` model and build an app on *url* in *mode*.

    *before_app* is called with ``(session, User, ext)`` after the models and
    before the app exists: that is where a module-level extension setup goes.
    *more_models* is called with ``(Base or db, User)`` to declare more models.
    """
    models: dict[str, type[t.Any]] = {}
    if mode == "compat":
        db = compat_module().SQLAlchemy()

        class CompatUser(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = f"{prefix}_user"
            id = sa.Column(sa.Integer, primary_key=True)
            email = sa.Column(sa.String(80), unique=True, nullable=False)
            name = sa.Column(sa.String(80), nullable=False, default="")
            active = sa.Column(sa.Boolean, nullable=False, default=True)

        if more_models is not None:
            models = more_models(db, CompatUser)
        session = db.session
        if before_app is not None:
            before_app(session, CompatUser, db)
        app = Flask(prefix, instance_path=str(tmp_path / "instance"))
        app.config["SQLALCHEMY_DATABASE_URI"] = url
        app.config["SECRET_KEY"] = "test"
        app.config.update(config or {})
        db.init_app(app)
        base: type[t.Any] = db.Model
        user: type[t.Any] = CompatUser
        ext: t.Any = db
    elif mode == "native":

        class Base(orm.DeclarativeBase):
            pass

        class NativeUser(Base):
            __tablename__ = f"{prefix}_user"
            id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
            email: orm.Mapped[str] = orm.mapped_column(sa.String(80), unique=True)
            name: orm.Mapped[str] = orm.mapped_column(sa.String(80), default="")
            active: orm.Mapped[bool] = orm.mapped_column(default=True)

        if more_models is not None:
            models = more_models(Base, NativeUser)
        uow = UnitOfWork(metadata=Base)
        session = uow.session  # At import time: no app, no context.
        if before_app is not None:
            before_app(session, NativeUser, uow)
        app = Flask(prefix, instance_path=str(tmp_path / "instance"))
        app.config["UOW_ENGINES"] = {"default": url}
        app.config["SECRET_KEY"] = "test"
        app.config.update(config or {})
        uow.init_app(app)
        base, user, ext = Base, NativeUser, uow
    else:  # pragma: no cover - a typo in a test
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    with app.app_context():
        ext.drop_all()
        ext.create_all()
    return Setup(app, ext, session, user, base, models)


def drop(setup: Setup) -> None:
    """Drop the setup's tables and dispose its engines."""
    with setup.app.app_context():
        setup.ext.drop_all()
        for engine in setup.ext.engines.values():
            engine.dispose()


def emails(engine: sa.Engine, setup: Setup) -> list[str]:
    """The users' emails, read through a separate connection."""
    table = setup.User.__table__
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(table.c.email).order_by(table.c.email)).scalars()
        )
