"""What :class:`~flask_uow.compat.SQLAlchemy` reads from the config and
builds: the engine options of each bind, and the ``db.Model`` class.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import types
import typing as t
import warnings

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from .model import BindMetaMixin
from .model import BindMixin
from .model import DefaultMeta
from .model import DefaultMetaNoName
from .model import Extension
from .model import Model
from .model import NameMetaMixin
from .model import NameMixin

_NO_URL = "Either 'SQLALCHEMY_DATABASE_URI' or 'SQLALCHEMY_BINDS' must be set."


def engine_options(
    app: Flask, defaults: dict[str, t.Any]
) -> dict[str | None, dict[str, t.Any]]:
    """The ``create_engine`` arguments of each bind key from the
    ``SQLALCHEMY_*`` config (``None`` is the default engine's):
    ``engine_options=`` are the defaults of every engine,
    ``SQLALCHEMY_ENGINE_OPTIONS`` overrides them for the default engine.

    :raise RuntimeError: Neither a URI nor binds are configured.
    """
    config = app.config
    uri = config.setdefault("SQLALCHEMY_DATABASE_URI", None)
    basic = dict(defaults)
    basic.update(config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {}))
    echo = config.setdefault("SQLALCHEMY_ECHO", False)
    binds = config.setdefault("SQLALCHEMY_BINDS", {})
    config.setdefault("SQLALCHEMY_RECORD_QUERIES", False)
    config.setdefault("SQLALCHEMY_TRACK_MODIFICATIONS", False)
    result: dict[str | None, dict[str, t.Any]] = {}
    for key, value in binds.items():
        options = dict(defaults)
        if isinstance(value, cabc.Mapping):
            options.update(value)
        else:
            options["url"] = value
        result[key] = options
    if "url" not in basic and uri:
        basic["url"] = uri
    if "url" in basic:
        result[None] = basic
    if not result:
        raise RuntimeError(_NO_URL)
    for options in result.values():
        options.setdefault("echo", echo)
        options.setdefault("echo_pool", echo)
        driver_defaults(options, app)
    return result


def driver_defaults(options: dict[str, t.Any], app: Flask) -> None:
    """Flask-SQLAlchemy's per-driver defaults: an in-memory SQLite database is
    one connection shared by all threads, a relative SQLite path is in the
    instance folder, MySQL recycles connections and speaks utf8mb4.
    """
    url = sa.make_url(options["url"])
    if url.drivername.startswith("mysql"):
        options.setdefault("pool_recycle", 7200)
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
    elif url.drivername.startswith("sqlite"):
        database = url.database
        if database in (None, "", ":memory:") or url.query.get("mode") == "memory":
            options["poolclass"] = sa.pool.StaticPool
            options.setdefault("connect_args", {})["check_same_thread"] = False
        else:
            assert database is not None
            is_uri = url.query.get("uri", False)
            path = database[5:] if is_uri and database.startswith("file:") else database
            if not os.path.isabs(path):
                os.makedirs(app.instance_path, exist_ok=True)
                path = os.path.join(app.instance_path, path)
                url = url.set(database=f"file:{path}" if is_uri else path)
    options["url"] = url


def declarative_bases_2x(model_class: type[t.Any]) -> list[type[t.Any]]:
    """The 2.x declarative base classes *model_class* derives from."""
    found = (orm.DeclarativeBase, orm.DeclarativeBaseNoMeta)
    return [b for b in model_class.__mro__ if b in found]


def make_model(
    db: Extension,
    model_class: type[t.Any],
    disable_autonaming: bool,
    metadata: sa.MetaData | None,
) -> type[t.Any]:
    """``db.Model``: a declarative base built from *model_class*, with
    ``query``, ``__bind_key__`` and (unless disabled) generated table names.
    """
    bases = declarative_bases_2x(model_class)
    if len(bases) > 1:
        raise ValueError(
            "'model_class' derives from several declarative bases"
            f" ({', '.join(b.__name__ for b in bases)}); derive it from one of"
            " 'DeclarativeBase' or 'DeclarativeBaseNoMeta'."
        )
    if bases:
        return _model_2x(db, model_class, disable_autonaming, metadata)
    if not isinstance(model_class, orm.DeclarativeMeta):
        meta = DefaultMetaNoName if disable_autonaming else DefaultMeta
        model_class = orm.declarative_base(
            metadata=metadata, cls=model_class, name="Model", metaclass=meta
        )
    if metadata is not None and model_class.metadata is not metadata:
        model_class.metadata = metadata
    model_class.metadata.info["bind_key"] = None
    model_class.query_class = db.Query
    model_class.query = Model.__dict__["query"]
    model_class.__fsa__ = db
    return model_class


def _model_2x(
    db: Extension,
    model_class: type[t.Any],
    disable_autonaming: bool,
    metadata: sa.MetaData | None,
) -> type[t.Any]:
    """An abstract subclass of the 2.x base with the mixins: mapping stays
    SQLAlchemy's own, including its dataclass transform.
    """
    if metadata is not None and metadata is not model_class.metadata:
        warnings.warn(
            "The 'metadata' argument is ignored when 'model_class' is a 2.x"
            " declarative base: it has its own metadata. Set 'metadata' as a"
            " class attribute of the base instead.",
            DeprecationWarning,
            stacklevel=4,
        )
    db.metadatas[None] = model_class.metadata  # Before BindMixin asks for it.
    mixins: list[type[t.Any]] = [BindMixin, Model]
    if not disable_autonaming:
        mixins.insert(1, NameMixin)
    body = {
        "__abstract__": True,
        "__fsa__": db,
        "query_class": db.Query,
        "query": Model.__dict__["query"],
        "__module__": model_class.__module__,
        "__qualname__": model_class.__qualname__,
    }
    model = types.new_class(
        model_class.__name__,
        (*mixins, model_class),
        {"metaclass": type(model_class)},
        lambda ns: ns.update(body),
    )
    t.cast(t.Any, model).metadata.info["bind_key"] = None
    return model


__all__ = ["BindMetaMixin", "NameMetaMixin", "engine_options", "make_model"]
