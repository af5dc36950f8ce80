"""The base of ``db.Model``: ``Model.query``, a readable ``repr``, table
names made from class names, and ``__bind_key__``, for declarative bases in
SQLAlchemy 1.x style (metaclasses) and 2.x style (``DeclarativeBase``).
"""

from __future__ import annotations

import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm

from .query import Query

if t.TYPE_CHECKING:
    from .._current import CurrentSession

_WORD_START = re.compile(r"((?<=[a-z0-9])[A-Z]|(?!^)[A-Z](?=[a-z]))")
_BASES_2X = (orm.DeclarativeBase, orm.DeclarativeBaseNoMeta)


def camel_to_snake_case(name: str) -> str:
    """``"CamelCase"`` as ``"camel_case"``: an underscore before each capital
    that starts a word (after a lower-case letter or digit, or before a
    lower-case letter), all in lower case.
    """
    return _WORD_START.sub(r"_\1", name).lower().lstrip("_")


class Extension(t.Protocol):
    """What the models need of their :class:`~flask_uow.compat.SQLAlchemy`
    (named here, not imported, so that the modules of the package import
    each other one way only).
    """

    Query: type[Query]
    metadatas: dict[str | None, sa.MetaData]
    session: CurrentSession

    def _make_metadata(self, bind_key: str | None) -> sa.MetaData: ...


class _QueryProperty:
    """``Model.query``: a query of the model on the current session."""

    def __get__(self, obj: object, cls: type[t.Any]) -> Query:
        return cls.query_class(cls, session=cls.__fsa__.session())  # type: ignore[no-any-return]


class Model:
    """The base class of ``db.Model``. It gives ``Model.query`` and a
    ``repr`` that shows the primary key.
    """

    if t.TYPE_CHECKING:
        __fsa__: Extension
        query_class: type[Query]
        query: Query

    def __repr__(self) -> str:
        state = sa.inspect(self)
        if state.transient:
            key = f"(transient {id(self)})"
        elif state.pending:
            key = f"(pending {id(self)})"
        else:
            key = ", ".join(map(str, state.identity or ()))
        return f"<{type(self).__name__} {key}>"


Model.query_class = Query
Model.query = _QueryProperty()  # type: ignore[assignment]


def _is_declarative(cls: type[t.Any]) -> bool:
    return isinstance(cls, orm.DeclarativeMeta) or issubclass(cls, _BASES_2X)


def _set_metadata(cls: type[t.Any]) -> None:
    """Give *cls* the metadata of its ``__bind_key__`` (inherited or its
    own) unless it has a metadata or table of its own or inherits the right
    metadata already.
    """
    own = cls.__dict__
    if "metadata" in own or "__table__" in own:
        return
    metadata = cls.__fsa__._make_metadata(getattr(cls, "__bind_key__", None))
    if metadata is not getattr(cls, "metadata", None):
        cls.metadata = metadata


def _should_name(cls: type[t.Any]) -> bool:
    """Whether *cls* gets a generated ``__tablename__``: a mapped class with
    none of its own, not abstract, and none inherited from a mapped class or a
    ``declared_attr``.
    """
    if cls.__dict__.get("__abstract__", False):
        return False
    if not any(_is_declarative(b) for b in cls.__mro__[1:]) and not issubclass(
        cls, _BASES_2X
    ):
        return False
    for base in cls.__mro__:
        if "__tablename__" not in base.__dict__:
            continue
        if isinstance(base.__dict__["__tablename__"], orm.declared_attr):
            return False
        # A name of its own, or one from an abstract class or a mixin, stays;
        # a mapped parent's is replaced (joined or single-table inheritance,
        # decided when the table is made).
        return not (
            base is cls
            or bool(base.__dict__.get("__abstract__", False))
            or not _is_declarative(base)
        )
    return True


def _table_or_none(cls: type[t.Any], args: tuple[t.Any, ...], kwargs: t.Any) -> t.Any:
    """The ``__table_cls__`` hook: make the table, unless the name was
    generated for a subclass that has no primary key of its own while a
    parent has a table (single-table inheritance): then drop the name and
    make nothing, so the parent's table is used.
    """
    schema = kwargs.get("schema")
    key = args[0] if schema is None else f"{schema}.{args[0]}"
    if key in cls.metadata.tables:
        return sa.Table(*args, **kwargs)
    for arg in args:
        if (isinstance(arg, sa.Column) and arg.primary_key) or isinstance(
            arg, sa.PrimaryKeyConstraint
        ):
            return sa.Table(*args, **kwargs)
    if not any("__table__" in base.__dict__ for base in cls.__mro__[1:-1]):
        return sa.Table(*args, **kwargs)
    if "__tablename__" in cls.__dict__:
        del cls.__tablename__
    return None


def _after_mapping(cls: type[t.Any]) -> None:
    """Remove the empty ``__table__`` left by a ``None`` from the hook."""
    if (
        "__tablename__" not in cls.__dict__
        and "__table__" in cls.__dict__
        and cls.__dict__["__table__"] is None
    ):
        del cls.__table__


class BindMetaMixin(type):
    """Metaclass mixin: a model's ``__bind_key__`` puts its table in that
    bind's metadata.
    """

    def __init__(
        cls, name: str, bases: tuple[type, ...], d: dict[str, t.Any], **kwargs: t.Any
    ) -> None:
        _set_metadata(cls)
        super().__init__(name, bases, d, **kwargs)


class NameMetaMixin(type):
    """Metaclass mixin: a ``__tablename__`` made from the class name."""

    def __init__(
        cls, name: str, bases: tuple[type, ...], d: dict[str, t.Any], **kwargs: t.Any
    ) -> None:
        if _should_name(cls):
            cls.__tablename__ = camel_to_snake_case(cls.__name__)
        super().__init__(name, bases, d, **kwargs)
        _after_mapping(cls)

    def __table_cls__(cls, *args: t.Any, **kwargs: t.Any) -> sa.Table | None:
        return _table_or_none(cls, args, kwargs)  # type: ignore[no-any-return]


class BindMixin:
    """2.x-style mixin of :class:`BindMetaMixin`."""

    @classmethod
    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        _set_metadata(cls)
        super().__init_subclass__(**kwargs)


class NameMixin:
    """2.x-style mixin of :class:`NameMetaMixin`."""

    @classmethod
    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        if _should_name(cls):
            cls.__tablename__ = camel_to_snake_case(cls.__name__)  # type: ignore[attr-defined]
        super().__init_subclass__(**kwargs)
        _after_mapping(cls)

    @classmethod
    def __table_cls__(cls, *args: t.Any, **kwargs: t.Any) -> sa.Table | None:
        return _table_or_none(cls, args, kwargs)  # type: ignore[no-any-return]


class DefaultMeta(BindMetaMixin, NameMetaMixin, orm.DeclarativeMeta):
    """The metaclass of the default 1.x-style ``db.Model``."""


class DefaultMetaNoName(BindMetaMixin, orm.DeclarativeMeta):
    """The metaclass of ``db.Model`` with ``disable_autonaming=True``."""
