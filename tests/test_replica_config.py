"""Configuration of read replicas, and the errors for bad input."""

from __future__ import annotations

import gc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory

SECRET = "s3cr3t-pw"


@pytest.fixture
def backend() -> str:
    """Configuration does not depend on the database: SQLite only."""
    return "sqlite"


def replicated(url: str, *replicas: t.Any, **options: t.Any) -> dict[str, t.Any]:
    return {"default": {"url": url, "replicas": list(replicas), **options}}


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (
            {"UOW_ENGINES": {"default": {"url": "sqlite://", "replicas": "sqlite://"}}},
            TypeError,
            r"UOW_ENGINES\['default'\]\['replicas'\] must be a list of database URLs",
        ),
        (
            {"UOW_ENGINES": replicated("sqlite://", 42)},
            TypeError,
            r"UOW_ENGINES\['default'\]\['replicas'\]\[0\] must be a URL string",
        ),
        (
            {"UOW_ENGINES": replicated("sqlite://", "sqlite://", "not a url")},
            ValueError,
            r"UOW_ENGINES\['default'\]\['replicas'\]\[1\] is not a valid database URL",
        ),
        (
            {"UOW_ENGINES": replicated("sqlite://", f"postgresql://u:{SECRET}@h/db")},
            ValueError,
            r"\['replicas'\]\[0\] is a 'postgresql' database, but its primary is"
            r" 'sqlite'\. List replicas of that database only\.",
        ),
        (
            {"UOW_ENGINES": replicated("sqlite://", "sqlite://"), "SECRET_KEY": None},
            RuntimeError,
            r"Read replicas need the app's 'SECRET_KEY'.*Set app\.config",
        ),
        (
            {"UOW_REPLICA_MAX_LAG": "5"},
            TypeError,
            r"'UOW_REPLICA_MAX_LAG' must be a number of seconds, or None for no"
            r" limit, not '5'\. For example",
        ),
        (
            {"UOW_REPLICA_WAIT": True},
            TypeError,
            r"'UOW_REPLICA_WAIT' must be a number of seconds, not True",
        ),
        (
            {"UOW_REPLICA_BACKOFF": -1},
            ValueError,
            r"'UOW_REPLICA_BACKOFF' is negative \(-1\)\. Use 0 or more\.",
        ),
        (
            {"UOW_REPLICA_COOKIE": ""},
            TypeError,
            r"'UOW_REPLICA_COOKIE' must be a cookie name, not ''\. For example",
        ),
    ],
)
def test_bad_replica_configuration_is_rejected(
    make_app: AppFactory,
    uow: UnitOfWork,
    config: dict[str, t.Any],
    error: type[Exception],
    message: str,
) -> None:
    """Bad replica settings fail init_app with a message naming the key and
    the fix, never the password; the app is left unregistered.
    """
    app = make_app(init=False, **{"SECRET_KEY": "k", **config})
    with pytest.raises(error, match=message) as excinfo:
        uow.init_app(app)
    assert SECRET not in str(excinfo.value)
    assert "uow" not in app.extensions


def test_invalid_replica_url_hides_the_password(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A replica URL that cannot become an engine is shown without password."""
    url = f"postgresql+nodriver://u:{SECRET}@h/db"
    app = make_app(
        init=False,
        SECRET_KEY="k",
        UOW_ENGINES={"default": {"url": "postgresql://u@h/db", "replicas": [url]}},
    )
    with pytest.raises(ValueError, match=r"\['replicas'\]\[0\] \(") as excinfo:
        uow.init_app(app)
    assert SECRET not in str(excinfo.value)


def test_replicas_share_the_primary_options(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """A replica gets its primary's create_engine arguments, unless its own
    entry (a dict with a 'url') overrides them.
    """
    primary = f"sqlite:///{tmp_path / 'p.db'}"
    app = make_app(
        SECRET_KEY="k",
        UOW_ENGINES=replicated(
            primary,
            f"sqlite:///{tmp_path / 'r1.db'}",
            {"url": f"sqlite:///{tmp_path / 'r2.db'}", "pool_size": 3},
            pool_size=7,
        ),
    )
    with app.app_context():
        first, second = uow.replica_engines["default"]
        assert first.pool.size() == 7  # type: ignore[attr-defined]
        assert second.pool.size() == 3  # type: ignore[attr-defined]
        assert uow.engines["default"].pool.size() == 7  # type: ignore[attr-defined]


def test_without_replicas_nothing_is_routed(flask_app: Flask, uow: UnitOfWork) -> None:
    """An app without replicas has no replica engines and the defaults set."""
    with flask_app.app_context():
        assert dict(uow.replica_engines) == {}
    assert flask_app.config["UOW_REPLICA_MAX_LAG"] == 30.0
    assert flask_app.config["UOW_REPLICA_COOKIE"] == "uow_ryw"


def test_dispose_engines_includes_replicas(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """dispose_engines empties the replicas' pools too."""
    replica = f"sqlite:///{tmp_path / 'r.db'}"
    app = make_app(
        SECRET_KEY="k",
        UOW_ENGINES=replicated(f"sqlite:///{tmp_path / 'p.db'}", replica),
    )
    with app.app_context():
        (engine,) = uow.replica_engines["default"]
        with engine.connect():
            pass
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        uow.dispose_engines()
        assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]


def test_replicas_of_other_databases_are_accepted(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """Replicas of a database without WAL positions or a read-only setting
    flask_uow knows (MySQL) are accepted; nothing connects at init_app.
    """
    app = make_app(
        SECRET_KEY="k",
        UOW_ENGINES=replicated(
            "mysql+pymysql://u@primary/db", "mysql+pymysql://u@r/db"
        ),
    )
    with app.app_context():
        (engine,) = uow.replica_engines["default"]
        assert engine.dialect.name == "mysql"


def test_an_app_with_replicas_is_garbage_collected(tmp_path: pathlib.Path) -> None:
    """The extension keeps no reference to an app with replicas: when the app
    is collected, its state goes and the replicas' pools are closed.
    """
    uow = UnitOfWork()
    app = Flask("gc_replicas", root_path=str(tmp_path), instance_path=str(tmp_path))
    app.config["SECRET_KEY"] = "k"
    app.config["UOW_ENGINES"] = replicated(
        f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'r.db'}"
    )
    uow.init_app(app)

    @app.get("/")
    def index() -> str:
        return str(uow.session.scalar(sa.select(sa.literal(1))))

    assert app.test_client().get("/").get_data(as_text=True) == "1"
    with app.app_context():
        pool = uow.replica_engines["default"][0].pool
    assert pool.checkedin() == 1  # type: ignore[attr-defined]
    del app, index
    gc.collect()
    assert len(uow._states) == 0
    assert pool.checkedin() == 0  # type: ignore[attr-defined]
