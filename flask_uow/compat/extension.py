"""``SQLAlchemy``: Flask-SQLAlchemy 3.1's extension object, on flask_uow's
unit of work.
"""

from __future__ import annotations

import collections.abc as cabc
import types
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import abort
from flask import current_app
from flask import Flask
from flask import g

from .. import UnitOfWork
from ._setup import engine_options
from ._setup import make_model
from .cli import add_models_to_shell
from .model import Model
from .pagination import DEFAULT_MAX_PER_PAGE
from .pagination import Pagination
from .pagination import SelectPagination
from .query import Query
from .session import Session
from .track_modifications import _listen as listen_for_modifications

_ALREADY = (
    "A 'SQLAlchemy' instance has already been registered on this Flask app."
    " Import and use that instance instead."
)


class SQLAlchemy:
    """Flask-SQLAlchemy's ``SQLAlchemy`` object, with the same constructor
    arguments, attributes and methods, running on a
    :class:`~flask_uow.UnitOfWork` (:attr:`uow`): each request is a unit of
    work, committed before its response is sent when it succeeds and rolled
    back when it fails.

    :param app: Call :meth:`init_app` on this app now.
    :param metadata: The ``MetaData`` of the default engine's tables.
    :param session_options: Keyword arguments of the sessions.
        ``class_`` must subclass :class:`flask_uow.compat.session.Session`;
        ``scopefunc`` is refused: a unit of work is a session's scope.
    :param query_class: The class of ``Model.query`` and ``session.query()``.
    :param model_class: The base of :attr:`Model`: a plain class, a 1.x
        declarative base, or a 2.x ``DeclarativeBase`` subclass.
    :param engine_options: Default ``create_engine`` arguments of every engine.
    :param add_models_to_shell: Add ``db`` and the models to ``flask shell``.
    :param disable_autonaming: Do not make table names from class names.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        metadata: sa.MetaData | None = None,
        session_options: dict[str, t.Any] | None = None,
        query_class: type[Query] = Query,
        model_class: t.Any = Model,
        engine_options: dict[str, t.Any] | None = None,
        add_models_to_shell: bool = True,
        disable_autonaming: bool = False,
    ) -> None:
        options = dict(session_options or {})
        if "scopefunc" in options:
            raise ValueError(
                "session_options={'scopefunc': ...} is not supported by"
                " flask_uow.compat: each request, and outside requests each"
                " application context, is a unit of work with its own session."
                " Remove the option."
            )
        session_class = options.pop("class_", Session)
        if not (isinstance(session_class, type) and issubclass(session_class, Session)):
            raise TypeError(
                "session_options['class_'] must be a subclass of"
                " 'flask_uow.compat.session.Session', which takes part in the"
                f" unit of work; {session_class!r} is not."
            )
        options.setdefault("query_cls", query_class)
        self._session_options = options
        self._engine_options = dict(engine_options or {})
        self._add_models_to_shell = add_models_to_shell
        self._app_engines: weakref.WeakKeyDictionary[
            Flask, dict[str | None, sa.Engine]
        ] = weakref.WeakKeyDictionary()
        #: The :class:`~flask_uow.UnitOfWork` this object runs on: its
        #: transactions, ``on_commit``, query recording and test isolation.
        self.uow = UnitOfWork()
        # Every app's sessions are made from a subclass of this class.
        self.uow.session.session_factory = orm.sessionmaker(class_=session_class)
        _COMPAT_UOWS.add(self.uow)
        #: The class of ``Model.query``.
        self.Query = query_class
        #: The ``MetaData`` of each bind key; ``None`` is the default engine's.
        self.metadatas: dict[str | None, sa.MetaData] = {}
        if metadata is not None:
            metadata.info["bind_key"] = None
            self.metadatas[None] = metadata
        #: The session of the current unit of work: :attr:`uow.session
        #: <flask_uow.UnitOfWork.session>`, a ``scoped_session`` that may be
        #: taken at import time. ``db.session()`` returns the session itself,
        #: ``db.session.remove()`` ends it.
        self.session = self.uow.session
        #: The declarative base of the app's models.
        self.Model = make_model(self, model_class, disable_autonaming, metadata)
        self.metadatas[None] = self.Model.metadata
        self._include_sqlalchemy()
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        if not current_app:
            return f"<{type(self).__name__}>"
        engine = self.engines.get(None)
        url = "no default engine" if engine is None else engine.url
        return f"<{type(self).__name__} {url}>"

    def init_app(self, app: Flask) -> None:
        """Create *app*'s engines from its ``SQLALCHEMY_*`` config, and set up
        its unit of work.

        :raise RuntimeError: A ``SQLAlchemy`` is already registered on *app*,
            or neither ``SQLALCHEMY_DATABASE_URI`` nor ``SQLALCHEMY_BINDS``
            is set.
        """
        if "sqlalchemy" in app.extensions:
            raise RuntimeError(_ALREADY)
        previous = app.extensions.get("uow")
        if previous is not None and not _owned_by_compat(previous):
            raise RuntimeError(
                f"The app {app.name!r} is already set up with a 'UnitOfWork';"
                " use either flask_uow.compat's 'SQLAlchemy' or 'UnitOfWork', not"
                " both."
            )
        options = engine_options(app, self._engine_options)
        engines: dict[str | None, sa.Engine] = {}
        for key, value in options.items():
            self._make_metadata(key)
            engines[key] = self._make_engine(key, value, app)
        default = engines.get(None) or next(iter(engines.values()))
        uow_engines: dict[str, t.Any] = {"default": default}
        uow_engines.update((k, e) for k, e in engines.items() if k is not None)
        config = app.config
        config["UOW_ENGINES"] = uow_engines
        config.setdefault("UOW_RECORD_QUERIES", config["SQLALCHEMY_RECORD_QUERIES"])
        config["UOW_SESSION_OPTIONS"] = {
            **config.get("UOW_SESSION_OPTIONS", {}),
            **self._session_options,
        }
        app.extensions.pop("uow", None)
        self.uow.init_app(app)
        self._app_engines[app] = engines
        app.extensions["sqlalchemy"] = self
        if self._add_models_to_shell:
            app.shell_context_processor(add_models_to_shell)
        if config["SQLALCHEMY_TRACK_MODIFICATIONS"]:
            listen_for_modifications(app)
        app.teardown_request(_forget_login_user)

    def _make_metadata(self, bind_key: str | None) -> sa.MetaData:
        """The ``MetaData`` of *bind_key*, created with the default metadata's
        naming convention if it does not exist yet.
        """
        found = self.metadatas.get(bind_key)
        if found is not None:
            return found
        default = self.metadatas.get(None)
        if default is not None:
            metadata = sa.MetaData(naming_convention=default.naming_convention)
        else:
            metadata = sa.MetaData()
        metadata.info["bind_key"] = bind_key
        self.metadatas[bind_key] = metadata
        return metadata

    def _make_engine(
        self, bind_key: str | None, options: dict[str, t.Any], app: Flask
    ) -> sa.Engine:
        """Create the engine of *bind_key*; override to customize it."""
        return sa.engine_from_config(options, prefix="")

    @property
    def metadata(self) -> sa.MetaData:
        """The default engine's ``MetaData``."""
        return self.metadatas[None]

    @property
    def engines(self) -> cabc.Mapping[str | None, sa.Engine]:
        """The current app's engines by bind key, ``None`` for the default.

        :raise RuntimeError: There is no application context.
        """
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return types.MappingProxyType(self._app_engines[app])

    @property
    def engine(self) -> sa.Engine:
        """The current app's default engine."""
        return self.engines[None]

    def get_engine(self, bind_key: str | None = None) -> sa.Engine:
        """The current app's engine of *bind_key*; Flask-Migrate calls it."""
        return self.engines[bind_key]

    def Table(
        self, name: str, *args: t.Any, bind_key: str | None = None, **kwargs: t.Any
    ) -> sa.Table:  # noqa: N802
        """A ``sqlalchemy.Table`` in the metadata of *bind_key*, unless a
        ``MetaData`` is given after the name.
        """
        if not (args and isinstance(args[0], sa.MetaData)):
            args = (self._make_metadata(bind_key), *args)
        return sa.Table(name, *args, **kwargs)

    def _for_binds(
        self, bind_key: str | None | list[str | None], op: str, **kw: t.Any
    ) -> None:
        engines = self.engines
        if bind_key == "__all__":
            keys: list[str | None] = list(self.metadatas)
        elif bind_key is None or isinstance(bind_key, str):
            keys = [bind_key]
        else:
            keys = list(bind_key)
        for key in keys:
            engine = engines.get(key)
            if engine is None:
                raise ValueError(
                    f"Bind key {key!r} is not in the 'SQLALCHEMY_BINDS' config."
                    " Add it there, or correct the model's '__bind_key__'."
                )
            getattr(self.metadatas[key], op)(bind=engine, **kw)

    def create_all(self, bind_key: str | None | list[str | None] = "__all__") -> None:
        """Create the tables that do not exist, each on its bind's engine."""
        self._for_binds(bind_key, "create_all")

    def drop_all(self, bind_key: str | None | list[str | None] = "__all__") -> None:
        """Drop the tables that exist, each on its bind's engine."""
        self._for_binds(bind_key, "drop_all")

    def reflect(self, bind_key: str | None | list[str | None] = "__all__") -> None:
        """Load the tables of each bind's database into its metadata."""
        self._for_binds(bind_key, "reflect")

    def get_or_404(
        self,
        entity: type[t.Any],
        ident: t.Any,
        *,
        description: str | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        """``session.get(entity, ident, **kwargs)``, or abort with 404."""
        value = self.session().get(entity, ident, **kwargs)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The first result of *statement*, or abort with 404."""
        value = self.session().execute(statement).scalar()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The only result of *statement*, or abort with 404 for none or several."""
        try:
            return self.session().execute(statement).scalar_one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def paginate(
        self,
        select: sa.Select[t.Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = DEFAULT_MAX_PER_PAGE,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """One page of *select*'s results; see
        :class:`~flask_uow.compat.pagination.Pagination`.
        """
        return SelectPagination(
            select=select,
            session=self.session(),
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )

    def _with_query_class(self, kwargs: dict[str, t.Any]) -> None:
        kwargs.setdefault("query_class", self.Query)
        backref = kwargs.get("backref")
        if isinstance(backref, str):
            kwargs["backref"] = backref = (backref, {})
        if isinstance(backref, tuple):
            backref[1].setdefault("query_class", self.Query)

    def relationship(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """``sqlalchemy.orm.relationship``, with this ``Query`` for dynamic loads."""
        self._with_query_class(kwargs)
        return orm.relationship(*args, **kwargs)

    def dynamic_loader(self, argument: t.Any, **kwargs: t.Any) -> t.Any:
        """``sqlalchemy.orm.dynamic_loader`` with this ``Query``."""
        self._with_query_class(kwargs)
        return orm.dynamic_loader(argument, **kwargs)

    def backref(self, name: str, **kwargs: t.Any) -> t.Any:
        """``sqlalchemy.orm.backref`` with this ``Query`` for dynamic loads."""
        kwargs.setdefault("query_class", self.Query)
        return orm.backref(name, **kwargs)

    def _include_sqlalchemy(self) -> None:
        """The names of ``sqlalchemy`` and ``sqlalchemy.orm`` on the object,
        as ``db.Column``, ``db.select``...
        """
        for module in (sa, orm):
            for name in getattr(module, "__all__", dir(module)):
                if not (
                    name.startswith("_")
                    or hasattr(type(self), name)
                    or name in self.__dict__
                ):
                    setattr(self, name, getattr(module, name))
        self.event = sa.event

    if t.TYPE_CHECKING:

        def __getattr__(self, name: str) -> t.Any: ...


def _forget_login_user(exc: BaseException | None) -> None:
    """Drop the user Flask-Login cached in ``g`` when the request ends.

    The user was loaded in the request's unit of work, which has ended. When
    the application context outlives the request (pytest-flask pushes one
    for a whole test), the next request would otherwise be handed that
    finished unit's object, where Flask-SQLAlchemy's context-wide session
    kept it usable; this way it loads the user in its own unit.
    """
    g.__dict__.pop("_login_user", None)


def _owned_by_compat(uow: UnitOfWork) -> bool:
    """Whether *uow* was made by a compat ``SQLAlchemy`` (whose registration
    was removed from ``app.extensions``, so another may take its place).
    """
    return uow in _COMPAT_UOWS


_COMPAT_UOWS: weakref.WeakSet[UnitOfWork] = weakref.WeakSet()
