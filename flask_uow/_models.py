"""The app's models: their metadata by bind key, creating and dropping their
tables, and what ``flask shell`` and Flask-Migrate read.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm

from ._engines import bind_key_of

#: What ``UnitOfWork(metadata=...)`` accepts.
MetadataArgument = t.Union[
    "type[orm.DeclarativeBase]",
    sa.MetaData,
    "cabc.Sequence[type[orm.DeclarativeBase] | sa.MetaData]",
    None,
]

_METADATA_HELP = (
    "Pass a declarative base class, a 'MetaData', or a list of them, for"
    " example UnitOfWork(metadata=Base)."
)


def _key(bind_key: str | None) -> str | None:
    """Flask-Migrate names the default engine ``None``; ``"default"`` too."""
    return None if bind_key == "default" else bind_key


def _engine_name(key: str | None) -> str:
    return "default" if key is None else key


class Models:
    """The metadata given to a :class:`~flask_uow.UnitOfWork`, by bind key."""

    def __init__(self, value: MetadataArgument) -> None:
        #: The declarative base classes given, for the shell.
        self.bases: list[type[t.Any]] = []
        sources: list[sa.MetaData] = []
        if value is None:
            items: list[t.Any] = []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        for item in items:
            found = getattr(item, "metadata", None)
            if isinstance(item, sa.MetaData):
                sources.append(item)
            elif isinstance(item, type) and isinstance(found, sa.MetaData):
                self.bases.append(item)
                sources.append(found)
            else:
                raise TypeError(
                    f"'metadata' got {type(item).__name__!r}, which is neither a"
                    f" declarative base class nor a 'MetaData'. {_METADATA_HELP}"
                )
        #: One ``MetaData`` per bind key, ``None`` for the default engine.
        self.metadatas: dict[str | None, sa.MetaData] = _by_bind_key(sources)

    @property
    def metadata(self) -> sa.MetaData:
        """The metadata of the default engine."""
        metadata = self.metadatas.get(None)
        if metadata is None:
            raise RuntimeError(
                "This 'UnitOfWork' has no metadata for the default engine."
                f" {_METADATA_HELP}"
            )
        return metadata

    def include(self, tables: sa.MetaData) -> None:
        """Add copies of flask_uow's own *tables* (the outbox's) to the
        default engine's metadata, unless a table of that name is there.
        """
        target = self.metadatas.get(None)
        if target is None:
            target = self.metadatas[None] = sa.MetaData()
        for table in tables.tables.values():
            if table.name not in target.tables:
                table.to_metadata(target)

    def bind_names(self) -> list[str]:
        """The bind keys other than the default engine's."""
        return sorted(key for key in self.metadatas if key is not None)

    def create_all(self, engines: cabc.Mapping[str, sa.Engine]) -> None:
        for key, metadata in self.metadatas.items():
            metadata.create_all(_engine(engines, key))

    def drop_all(self, engines: cabc.Mapping[str, sa.Engine]) -> None:
        for key, metadata in self.metadatas.items():
            metadata.drop_all(_engine(engines, key))

    def shell_context(self) -> dict[str, t.Any]:
        """The mapped classes of the declarative bases, by class name."""
        context: dict[str, t.Any] = {}
        for base in self.bases:
            for mapper in base.registry.mappers:
                context[mapper.class_.__name__] = mapper.class_
        return context


def _engine(engines: cabc.Mapping[str, sa.Engine], key: str | None) -> sa.Engine:
    name = _engine_name(key)
    try:
        return engines[name]
    except KeyError:
        raise RuntimeError(
            f"Tables have the bind_key {name!r}, but 'UOW_ENGINES' has no engine"
            f" named {name!r}. Add UOW_ENGINES[{name!r}] = '<database URL>' to the"
            " config, or correct the bind_key."
        ) from None


def _by_bind_key(sources: list[sa.MetaData]) -> dict[str | None, sa.MetaData]:
    """Group the tables of *sources* by bind key. A ``MetaData`` whose tables
    all go to its own engine is used as it is; tables that must be split off
    or merged (table-level bind keys, several metadata for one engine) are
    copied into a new ``MetaData`` per bind key.
    """
    owners: dict[str | None, list[sa.MetaData]] = {}
    tables: dict[str | None, list[sa.Table]] = {}
    for metadata in sources:
        if not metadata.tables:
            owners.setdefault(_key(metadata.info.get("bind_key")), []).append(metadata)
        for table in metadata.tables.values():
            key = _key(bind_key_of(table))
            tables.setdefault(key, []).append(table)
            found = owners.setdefault(key, [])
            if metadata not in found:
                found.append(metadata)
    result: dict[str | None, sa.MetaData] = {}
    for key, found in owners.items():
        if len(found) == 1 and all(
            _key(bind_key_of(table)) == key for table in found[0].tables.values()
        ):
            result[key] = found[0]
            continue
        merged = sa.MetaData(
            naming_convention=found[0].naming_convention,
            info={} if key is None else {"bind_key": key},
        )
        for table in tables.get(key, []):
            table.to_metadata(merged)
        result[key] = merged
    return result


def check_flask_sqlalchemy_config(config: cabc.Mapping[str, t.Any]) -> None:
    """Refuse an app configured for Flask-SQLAlchemy only, naming the key to
    set instead. The URL is not shown: it may hold a password.
    """
    if "UOW_ENGINES" in config:
        return
    found = [k for k in ("SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_BINDS") if k in config]
    if found:
        raise RuntimeError(
            f"'UOW_ENGINES' is not set, but {found[0]!r} is: flask_uow does not"
            " read Flask-SQLAlchemy's configuration. Set"
            " app.config['UOW_ENGINES'] = {'default': <the database URL>}, with"
            " one more entry per 'SQLALCHEMY_BINDS' key, before 'init_app'."
        )


class ModelMethods:
    """The schema methods of :class:`~flask_uow.UnitOfWork`."""

    _models: Models

    if t.TYPE_CHECKING:

        @property
        def engines(self) -> cabc.Mapping[str, sa.Engine]: ...

    @property
    def metadata(self) -> sa.MetaData:
        """The ``MetaData`` of the default engine's tables, from the
        ``metadata`` argument. Flask-Migrate and Alembic's ``env.py`` use it
        as ``target_metadata``.

        :raise RuntimeError: No metadata was given for the default engine.

        .. versionadded:: 0.1
        """
        return self._models.metadata

    @property
    def metadatas(self) -> cabc.Mapping[str | None, sa.MetaData]:
        """The ``MetaData`` of each engine's tables, by bind key; ``None`` is
        the default engine. Tables are grouped by the ``bind_key`` in the
        ``info`` of the table or else of its ``MetaData``; where a ``MetaData``
        holds tables for several engines, or several hold tables for one, its
        entry is a new ``MetaData`` with copies of those tables.

        .. versionadded:: 0.1
        """
        return self._models.metadatas

    def bind_names(self) -> list[str]:
        """The bind keys of :attr:`metadatas` other than the default engine's,
        sorted. Flask-Migrate's multi-database ``env.py`` migrates these.

        .. versionadded:: 0.1
        """
        return self._models.bind_names()

    def get_engine(self, bind: str | None = None) -> sa.Engine:
        """The engine for a bind key: the ``UOW_ENGINES`` entry of that name,
        or the ``"default"`` engine for ``None``. Flask-Migrate's ``env.py``
        calls it.

        :param bind: A bind key, or ``None``.
        :raise RuntimeError: ``UOW_ENGINES`` has no such engine, or there is
            no application context.

        .. versionadded:: 0.1
        """
        return _engine(self.engines, _key(bind))

    def create_all(self) -> None:
        """Create the tables of :attr:`metadatas` that do not exist, each on
        the engine of its bind key, with a connection of its own (outside the
        unit of work, and outside test isolation).

        :raise RuntimeError: A bind key has no engine in ``UOW_ENGINES``, or
            there is no application context.

        .. versionadded:: 0.1
        """
        self._models.create_all(self.engines)

    def drop_all(self) -> None:
        """Drop the tables of :attr:`metadatas` that exist, each on the engine
        of its bind key, as :meth:`create_all` creates them.

        .. versionadded:: 0.1
        """
        self._models.drop_all(self.engines)
