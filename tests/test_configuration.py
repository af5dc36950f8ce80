"""Configuration: engines, bind keys, session options, and the errors for bad
input.
"""

from __future__ import annotations

import logging
import pathlib
import socket
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database


@pytest.fixture
def backend() -> str:
    """Configuration does not depend on the database: SQLite only."""
    return "sqlite"


SECRET = "s3cr3t-pw"


def error_text(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The message of an error and of every error chained to it."""
    texts = []
    e: BaseException | None = excinfo.value
    while e is not None:
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(texts)


def test_init_app_sets_the_extension(flask_app: Flask, uow: UnitOfWork) -> None:
    """init_app registers the instance; UnitOfWork(app) does the same."""
    assert flask_app.extensions["uow"] is uow
    app = Flask("direct", root_path=str(pathlib.Path.cwd()))
    app.config["UOW_ENGINES"] = {"default": "sqlite://"}
    direct = UnitOfWork(app)
    assert app.extensions["uow"] is direct
    with app.app_context():
        assert direct.engines == {"default": direct.engine}
    direct.dispose_engines(app)


def test_init_app_twice_is_an_error(flask_app: Flask, uow: UnitOfWork) -> None:
    """A second init_app for the same app is refused."""
    with pytest.raises(RuntimeError, match="'init_app' was called twice"):
        uow.init_app(flask_app)
    with pytest.raises(RuntimeError, match="already set up"):
        UnitOfWork().init_app(flask_app)


@pytest.mark.parametrize(
    ("engines", "error", "message"),
    [
        (None, RuntimeError, r"'UOW_ENGINES' is not set\. Set it"),
        ("sqlite://", TypeError, r"'UOW_ENGINES' must be a dict"),
        ({"other": "sqlite://"}, RuntimeError, r"no 'default' engine\. Add one"),
        ({"default": 42}, TypeError, r"UOW_ENGINES\['default'\] must be a URL"),
        ({"default": {"echo": True}}, ValueError, r"without a 'url' key\. Add"),
        (
            {"default": "sqlite://", "reports": "not a url"},
            ValueError,
            r"UOW_ENGINES\['reports'\] is not a valid database URL\. Write it",
        ),
        (
            {"default": {"url": "sqlite://", "no_such_option": 1}},
            ValueError,
            r"UOW_ENGINES\['default'\] \(sqlite://\) could not be turned into an"
            r" engine: .*no_such_option",
        ),
        (
            {"default": "nosuchdialect://localhost/db"},
            ValueError,
            r"Check the dialect and driver names",
        ),
    ],
)
def test_bad_engine_config_is_refused_in_init_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    engines: t.Any,
    error: type[Exception],
    message: str,
) -> None:
    """Each bad UOW_ENGINES value gets a clear error naming the key, and the
    app is left unregistered so a corrected config can be retried.
    """
    app = make_app(init=False, UOW_ENGINES=engines)
    with pytest.raises(error, match=message):
        uow.init_app(app)
    assert "uow" not in app.extensions
    app.config["UOW_ENGINES"] = {"default": "sqlite://"}
    uow.init_app(app)
    uow.dispose_engines(app)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@localhost:notaport/db",
        f"nosuchdialect://user:{SECRET}@localhost/db",
        f"postgresql+nosuchdriver://user:{SECRET}@localhost/db",
    ],
)
def test_passwords_never_appear_in_errors(
    make_app: AppFactory, uow: UnitOfWork, url: str
) -> None:
    """A URL's password is not in the error or anything chained to it."""
    app = make_app(init=False, UOW_ENGINES={"default": url})
    with pytest.raises(ValueError) as excinfo:
        uow.init_app(app)
    assert "UOW_ENGINES['default']" in str(excinfo.value)
    assert SECRET not in error_text(excinfo)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return t.cast(int, sock.getsockname()[1])


def test_passwords_never_appear_in_reprs_or_logs(
    make_app: AppFactory, uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing connection logs and shows the URL without its password."""
    url = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:{closed_port()}/db"
    app = make_app(UOW_ENGINES={"default": url})

    @app.get("/")
    def index() -> str:
        return str(uow.session.execute(sa.select(1)).scalar())

    caplog.set_level(logging.DEBUG)
    assert app.test_client().get("/").status_code == 500
    with app.app_context():
        shown = repr(uow.engine) + repr(dict(uow.engines))
    assert "***" in shown
    assert caplog.records, "the failed request was not logged"
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert SECRET not in shown + logged


def test_engine_options_dict(make_app: AppFactory, uow: UnitOfWork) -> None:
    """A dict value passes its keys to create_engine."""
    app = make_app(UOW_ENGINES={"default": {"url": "sqlite://", "echo": True}})
    with app.app_context():
        assert uow.engine.echo is True


def test_relative_sqlite_path_is_in_the_instance_folder(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """'sqlite:///app.db' is a file in the app's instance folder."""
    app = make_app(UOW_ENGINES={"default": "sqlite:///app.db"})
    with app.app_context():
        uow.session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        uow.session.commit()
        assert uow.engine.url.database == str(tmp_path / "instance" / "app.db")
    assert (tmp_path / "instance" / "app.db").is_file()


def test_in_memory_sqlite_is_shared_by_all_requests(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """An in-memory database is one database for every request and thread."""
    app = make_app(UOW_ENGINES={"default": "sqlite://"})

    @app.post("/")
    def write() -> str:
        uow.session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        uow.session.execute(sa.text("INSERT INTO t VALUES (1)"))
        return "ok"

    @app.get("/")
    def read() -> str:
        return str(uow.session.execute(sa.text("SELECT x FROM t")).scalar())

    client = app.test_client()
    assert client.post("/").status_code == 200
    assert client.get("/").data == b"1"


reports = sa.MetaData(info={"bind_key": "reports"})


class Report(orm.DeclarativeBase):
    metadata = reports


class Summary(Report):
    __tablename__ = "summaries"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    title: orm.Mapped[str]


audit_table = sa.Table(
    "audit",
    sa.MetaData(),
    sa.Column("name", sa.String, primary_key=True),
    info={"bind_key": "reports"},
)
unknown_table = sa.Table(
    "unknown", sa.MetaData(), sa.Column("x", sa.Integer), info={"bind_key": "nope"}
)


def test_bind_key_routes_to_the_named_engine(
    make_app: AppFactory, uow: UnitOfWork, db: Database, tmp_path: pathlib.Path
) -> None:
    """Tables whose info or metadata info has a bind_key use that engine, for
    ORM models, Core statements and selects, and both commit at request end.
    """
    reports_db = Database(f"sqlite:///{tmp_path / 'reports.db'}")
    reports.create_all(reports_db.engine)
    audit_table.create(reports_db.engine)
    app = make_app(
        UOW_ENGINES={"default": db.url, "reports": reports_db.url},
    )

    @app.post("/")
    def write() -> str:
        uow.session.add(Summary(title="q3"))
        uow.session.flush()  # SQLAlchemy 2.0 does not autoflush for Core.
        uow.session.execute(sa.insert(audit_table).values(name="entry"))
        rows = uow.session.execute(sa.select(audit_table.c.name)).scalars().all()
        joined = sa.select(audit_table.c.name).select_from(
            audit_table.join(Summary.__table__, sa.true())
        )
        return ",".join([*rows, *uow.session.scalars(joined)])

    assert app.test_client().post("/").data == b"entry,entry"
    assert reports_db.scalar("SELECT title FROM summaries") == "q3"
    assert reports_db.names("audit") == ["entry"]
    reports_db.engine.dispose()


def test_unknown_bind_key_fails_at_the_first_statement(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A table naming an engine that is not configured gets a clear error."""
    app = make_app()
    with app.app_context():
        with pytest.raises(sa_exc.UnboundExecutionError) as excinfo:
            uow.session.execute(sa.select(unknown_table))
    message = str(excinfo.value)
    assert "Table 'unknown' has bind_key 'nope'" in message
    assert "Add UOW_ENGINES['nope']" in message


def test_session_options_are_used(make_app: AppFactory, uow: UnitOfWork) -> None:
    """UOW_SESSION_OPTIONS configures the sessions."""
    app = make_app(UOW_SESSION_OPTIONS={"expire_on_commit": False, "info": {"x": 1}})
    with app.app_context():
        assert uow.session().expire_on_commit is False
        assert uow.session.info == {"x": 1}


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"UOW_SESSION_OPTIONS": ["bad"]}, TypeError, r"must be a dict"),
        ({"UOW_SESSION_OPTIONS": {"bind": None}}, ValueError, r"must not set 'bind'"),
        (
            {"UOW_SESSION_OPTIONS": {"class_": orm.Session}},
            ValueError,
            r"must not set 'class_'",
        ),
        (
            {"UOW_SESSION_OPTIONS": {"autoflush_please": True}},
            TypeError,
            r"an option the session does not accept: .*autoflush_please",
        ),
        ({"UOW_AUTOCOMMIT": "yes"}, TypeError, r"'UOW_AUTOCOMMIT' must be True or"),
        ({"UOW_RETRY_DELAY": "0.1"}, TypeError, r"must be a number of seconds"),
        ({"UOW_RETRY_MAX_DELAY": True}, TypeError, r"must be a number of seconds"),
        ({"UOW_RETRY_DELAY": -1}, ValueError, r"is negative \(-1\)\. Use 0"),
    ],
)
def test_bad_settings_are_refused_in_init_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    config: dict[str, t.Any],
    error: type[Exception],
    message: str,
) -> None:
    """Bad session options or autocommit values are refused with the fix."""
    app = make_app(init=False, **config)
    with pytest.raises(error, match=message):
        uow.init_app(app)
    assert "uow" not in app.extensions


def test_session_outside_app_context_is_an_error(uow: UnitOfWork) -> None:
    """uow.session with no app context says how to push one."""
    with pytest.raises(RuntimeError, match=r"Working outside of application context"):
        uow.session.execute(sa.select(1))
    with pytest.raises(RuntimeError, match=r"with app\.app_context\(\)"):
        uow.mark_rollback_only()


def test_session_for_an_app_without_init_app_is_an_error(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """uow.session in an app that never called init_app says to call it."""
    app = make_app(init=False)
    with app.app_context():
        with pytest.raises(RuntimeError, match=r"Call 'uow\.init_app\(app\)'"):
            uow.session.execute(sa.select(1))
    with pytest.raises(RuntimeError, match=r"not set up with this 'UnitOfWork'"):
        uow.dispose_engines(app)


def test_commit_veto_must_be_callable(uow: UnitOfWork) -> None:
    """Registering something that is not a function is a TypeError."""
    with pytest.raises(TypeError, match=r"needs a function taking the response"):
        uow.commit_veto("status >= 400")  # type: ignore[arg-type]
