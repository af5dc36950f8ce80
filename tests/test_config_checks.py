"""Every configuration mistake fails in init_app, naming the key and the fix,
with nothing left open, and no message shows a password.
"""

from __future__ import annotations

import collections.abc as cabc
import gc
import logging
import math
import pathlib
import socket
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork
from flask_uow import UnknownConfigKeyWarning

from .conftest import AppFactory
from .conftest import Database
from .models import Item

SECRET = "s3cr3t-pw"
PG = "postgresql+psycopg://app@db.internal/app"


def engine(**options: t.Any) -> dict[str, t.Any]:
    """A UOW_ENGINES value whose default entry is an in-memory SQLite engine
    with *options*.
    """
    return {"default": {"url": "sqlite://", **options}}


class Opened:
    """Counts connections opened and engines disposed, by any engine."""

    def __init__(self) -> None:
        self.connections = 0
        self.disposed = 0

    def connect(self, *args: t.Any) -> None:
        self.connections += 1

    def dispose(self, *args: t.Any) -> None:
        self.disposed += 1


@pytest.fixture
def opened() -> cabc.Iterator[Opened]:
    """Watch every pool and engine while the test runs."""
    gc.collect()  # Apps of earlier tests dispose their engines when collected.
    watch = Opened()
    sa.event.listen(sa.pool.Pool, "connect", watch.connect)
    sa.event.listen(sa.Engine, "engine_disposed", watch.dispose)
    yield watch
    sa.event.remove(sa.pool.Pool, "connect", watch.connect)
    sa.event.remove(sa.Engine, "engine_disposed", watch.dispose)


MALFORMED: list[tuple[dict[str, t.Any], type[Exception], str]] = [
    # Engine arguments create_engine takes now and fails on later.
    (
        {"UOW_ENGINES": engine(poolclass="QueuePool")},
        TypeError,
        r"UOW_ENGINES\['default'\]\['poolclass'\] must be a pool class.* Import",
    ),
    (
        {"UOW_ENGINES": engine(poolclass=sa.Engine)},
        TypeError,
        r"\['poolclass'\] must be a pool class",
    ),
    (
        {"UOW_ENGINES": engine(connect_args="sslmode=require")},
        TypeError,
        r"UOW_ENGINES\['default'\]\['connect_args'\] must be a dict, not 'str'\.",
    ),
    (
        {"UOW_ENGINES": engine(execution_options=[("isolation_level", "x")])},
        TypeError,
        r"\['execution_options'\] must be a dict, not 'list'",
    ),
    ({"UOW_ENGINES": engine(pool_size="5")}, TypeError, r"\['pool_size'\] must be"),
    ({"UOW_ENGINES": engine(max_overflow=True)}, TypeError, r"\['max_overflow'\]"),
    ({"UOW_ENGINES": engine(pool_timeout="30")}, TypeError, r"\['pool_timeout'\]"),
    (
        {"UOW_ENGINES": engine(pool_timeout=math.nan)},
        ValueError,
        r"\['pool_timeout'\] is nan\. Use a finite",
    ),
    ({"UOW_ENGINES": engine(pool_recycle=math.inf)}, ValueError, r"pool_recycle"),
    (
        {"UOW_ENGINES": engine(isolation_level="CHAOS")},
        ValueError,
        r"UOW_ENGINES\['default'\]\['isolation_level'\] is 'CHAOS', which is not"
        r" an isolation level of 'sqlite'\. Use one of",
    ),
    (
        {"UOW_ENGINES": engine(isolation_level="REPEATABLE READ")},
        ValueError,
        r"not an isolation level of 'sqlite'",
    ),
    (
        {"UOW_ENGINES": engine(execution_options={"isolation_level": "CHAOS"})},
        ValueError,
        r"\['execution_options'\]\['isolation_level'\] is 'CHAOS'",
    ),
    (
        {"UOW_ENGINES": engine(isolation_level=1)},
        TypeError,
        r"\['isolation_level'\] must be an isolation level name",
    ),
    (
        {"UOW_ENGINES": engine(no_such_option=1)},
        ValueError,
        r"could not be turned into an engine: .*no_such_option",
    ),
    (
        {"UOW_ENGINES": {"default": "sqlite://", "extra": {"url": 42}}},
        ValueError,
        r"UOW_ENGINES\['extra'\] is not a valid database URL",
    ),
    (
        {"UOW_ENGINES": {"default": f"postgresql://app:a@{SECRET}@db/app"}},
        ValueError,
        r"UOW_ENGINES\['default'\] has more than one '@'.*'%40'",
    ),
    # Session options the session refuses, or that would fail every request.
    (
        {"UOW_SESSION_OPTIONS": {"join_transaction_mode": "bogus"}},
        ValueError,
        r"'UOW_SESSION_OPTIONS' has an option the session does not accept",
    ),
    (
        {"UOW_SESSION_OPTIONS": {"autobegin": False}},
        ValueError,
        r"'UOW_SESSION_OPTIONS' must not set 'autobegin' to False.* Remove",
    ),
    (
        {"UOW_SESSION_OPTIONS": {"info": "x"}},
        ValueError,
        r"'UOW_SESSION_OPTIONS' has an option",
    ),
    ({"UOW_SESSION_OPTIONS": {"engines": {}}}, ValueError, r"must not set 'engines'"),
    ({"UOW_SESSION_OPTIONS": {"uow_unit": 1}}, ValueError, r"must not set 'uow_unit'"),
    ({"UOW_SESSION_OPTIONS": None}, TypeError, r"'UOW_SESSION_OPTIONS' must be a"),
    # Plain values.
    ({"UOW_AUTOCOMMIT": None}, TypeError, r"'UOW_AUTOCOMMIT' must be True or False"),
    ({"UOW_AUTOCOMMIT": 1}, TypeError, r"'UOW_AUTOCOMMIT' must be True or False"),
    ({"UOW_RETRY_DELAY": math.nan}, ValueError, r"'UOW_RETRY_DELAY' is nan"),
    ({"UOW_RETRY_DELAY": math.inf}, ValueError, r"'UOW_RETRY_DELAY' is inf"),
    ({"UOW_RETRY_MAX_DELAY": -math.inf}, ValueError, r"'UOW_RETRY_MAX_DELAY' is -inf"),
    ({"UOW_RETRY_MAX_DELAY": math.inf}, ValueError, r"Use a finite number from 0"),
    (
        {"UOW_RETRY_MAX_DELAY": 1e20},
        ValueError,
        r"'UOW_RETRY_MAX_DELAY' is 1e\+20 seconds, more than an hour",
    ),
    ({"UOW_RETRY_DELAY": None}, TypeError, r"'UOW_RETRY_DELAY' must be a number"),
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("config", "error", "message"), MALFORMED)
def test_malformed_config_fails_in_init_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    opened: Opened,
    config: dict[str, t.Any],
    error: type[Exception],
    message: str,
) -> None:
    """Each malformed value raises TypeError or ValueError in init_app, with
    the key and the fix; no connection is opened and the app stays unset, so
    a corrected config can be set up.
    """
    app = make_app(init=False, **config)
    with pytest.raises(error, match=message) as excinfo:
        uow.init_app(app)
    assert "'UOW_" in str(excinfo.value) or "UOW_ENGINES[" in str(excinfo.value)
    assert SECRET not in str(excinfo.value) + repr(excinfo.value)
    assert "uow" not in app.extensions
    assert opened.connections == 0
    for key in config:
        app.config.pop(key)
    app.config["UOW_ENGINES"] = {"default": "sqlite://"}
    uow.init_app(app)
    uow.dispose_engines(app)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("config", "disposed"),
    [
        (
            {
                "UOW_ENGINES": {
                    "default": "sqlite://",
                    "reports": {"url": "sqlite://", "isolation_level": "CHAOS"},
                }
            },
            2,
        ),
        ({"UOW_SESSION_OPTIONS": {"join_transaction_mode": "bogus"}}, 1),
    ],
)
def test_engines_made_before_a_mistake_are_disposed(
    make_app: AppFactory,
    uow: UnitOfWork,
    opened: Opened,
    config: dict[str, t.Any],
    disposed: int,
) -> None:
    """Engines created before init_app finds a mistake are disposed."""
    app = make_app(init=False, **config)
    with pytest.raises(ValueError):
        uow.init_app(app)
    assert (opened.connections, opened.disposed) == (0, disposed)


@pytest.mark.parametrize(
    "options",
    [
        {"isolation_level": "AUTOCOMMIT"},
        {"isolation_level": "autocommit"},
        {"execution_options": {"isolation_level": "AUTOCOMMIT"}},
        {"connect_args": {"autocommit": True}},
        {"query": {"autocommit": "true"}},
    ],
)
def test_driver_autocommit_is_refused(
    make_app: AppFactory,
    uow: UnitOfWork,
    db: Database,
    options: dict[str, t.Any],
) -> None:
    """An engine set to autocommit in the driver is refused with the reason:
    the unit of work could not roll back a failed request.
    """
    options = dict(options)
    url = sa.make_url(db.url).update_query_dict(options.pop("query", {}))
    entry = {"url": url.render_as_string(False), **options}
    app = make_app(init=False, UOW_ENGINES={"default": entry})
    with pytest.raises(ValueError, match=r"could not roll back") as excinfo:
        uow.init_app(app)
    assert "UOW_ENGINES['default']" in str(excinfo.value)
    assert "uow" not in app.extensions


def test_valid_isolation_level_on_the_engine_is_kept(
    make_app: AppFactory, uow: UnitOfWork, db: Database, backend: str
) -> None:
    """An isolation level the dialect knows, in either spelling, is accepted,
    and a failing request still rolls back.
    """
    level = "serializable" if backend == "sqlite" else "repeatable_read"
    app = make_app(UOW_ENGINES={"default": {"url": db.url, "isolation_level": level}})

    @app.post("/fail")
    def fail() -> str:
        uow.session.add(Item(name="x"))
        uow.session.flush()
        raise ValueError("fail")

    assert app.test_client().post("/fail").status_code == 500
    assert db.names() == []


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("UOW_AUTO_COMMIT", "Did you mean 'UOW_AUTOCOMMIT'?"),
        ("UOW_SESSION_OPTION", "Did you mean 'UOW_SESSION_OPTIONS'?"),
        ("UOW_ENGINE", "Did you mean 'UOW_ENGINES'?"),
        ("uow_retry_delay", "Did you mean 'UOW_RETRY_DELAY'?"),
        ("UOW_XYZZY", "The known keys are 'UOW_AUTOCOMMIT', "),
    ],
)
def test_misspelled_key_warns_with_the_closest_key(
    make_app: AppFactory, uow: UnitOfWork, key: str, closest: str
) -> None:
    """A UOW_ key that flask_uow does not know gets a warning naming the
    closest known key; the app is still set up.
    """
    app = make_app(init=False, **{key: True})
    with pytest.warns(UnknownConfigKeyWarning) as record:
        uow.init_app(app)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"{key!r} is not a flask_uow setting, so it is ignored.")
    assert closest in message
    assert record[0].filename == __file__
    uow.dispose_engines(app)


def error_text(e: BaseException) -> str:
    """The message and repr of an error and of every error chained to it."""
    texts = []
    seen: BaseException | None = e
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "entry",
    [
        {"url": f"postgresql+psycopg://app:{SECRET}@db.internal/app"},
        {"url": f"{PG}?password={SECRET}"},
        {"url": f"{PG}?sslpassword={SECRET}&password={SECRET}"},
        {"url": sa.make_url(PG).set(password=SECRET)},
        {"url": PG, "connect_args": {"password": SECRET}},
        {"url": PG, "connect_args": {"sslpassword": SECRET}},
    ],
)
@pytest.mark.parametrize(
    "mistake",
    [{"no_such_option": 1}, {"isolation_level": "CHAOS"}, {"pool_size": "x"}],
)
def test_init_app_errors_never_show_a_password(
    make_app: AppFactory,
    uow: UnitOfWork,
    caplog: pytest.LogCaptureFixture,
    entry: dict[str, t.Any],
    mistake: dict[str, t.Any],
) -> None:
    """Whatever the form of the password (in the URL, its query string or the
    connect_args), it is not in the error, its repr, the errors chained to it,
    or the log.
    """
    caplog.set_level(logging.DEBUG)
    app = make_app(init=False, UOW_ENGINES={"default": {**entry, **mistake}})
    with pytest.raises((TypeError, ValueError)) as excinfo:
        uow.init_app(app)
    assert "UOW_ENGINES['default']" in str(excinfo.value)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in error_text(excinfo.value) + logged


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@localhost:notaport/db",
        f"postgresql://app:a@b:{SECRET}@localhost/db",
        f"postgresql://app:{SECRET}@[::1/db",
        f"postgresql://app:ab@cd/ef@{SECRET}/db",
    ],
)
def test_unparsable_url_errors_never_show_a_password(
    make_app: AppFactory, uow: UnitOfWork, url: str
) -> None:
    """A URL that cannot be parsed is reported without any part of it, and
    without the parser's own message, which may repeat part of the password.
    """
    app = make_app(init=False, UOW_ENGINES={"default": url})
    with pytest.raises(ValueError, match=r"UOW_ENGINES\['default'\]") as excinfo:
        uow.init_app(app)
    assert SECRET not in error_text(excinfo.value)
    assert "a@b" not in error_text(excinfo.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return t.cast(int, sock.getsockname()[1])


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("form", ["userinfo", "query", "connect_args"])
def test_connection_errors_never_show_a_password(
    make_app: AppFactory,
    uow: UnitOfWork,
    caplog: pytest.LogCaptureFixture,
    tmp_path: pathlib.Path,
    form: str,
) -> None:
    """When the first connection fails, the password is in neither the
    request's logged error (message, repr, traceback) nor repr(engine).
    """
    host = f"127.0.0.1:{closed_port()}"
    entries: dict[str, dict[str, t.Any]] = {
        "userinfo": {"url": f"postgresql+psycopg://app:{SECRET}@{host}/db"},
        "query": {"url": f"postgresql+psycopg://app@{host}/db?password={SECRET}"},
        "connect_args": {
            "url": f"postgresql+psycopg://app@{host}/db",
            "connect_args": {"password": SECRET},
        },
    }
    app = make_app(UOW_ENGINES={"default": entries[form]})

    @app.get("/")
    def index() -> str:
        return str(uow.session.execute(sa.select(1)).scalar())

    caplog.set_level(logging.DEBUG)
    assert app.test_client().get("/").status_code == 500
    with app.app_context():
        shown = repr(uow.engine) + repr(dict(uow.engines)) + str(uow.engine.url)
    assert "***" in shown or form == "connect_args"
    errors = [(r, r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert errors, "the failed request was not logged"
    formatter = logging.Formatter()
    logged = "\n".join(
        formatter.format(r) + error_text(e) for r, e in errors if e is not None
    )
    assert "Connection refused" in logged or "connection failed" in logged
    assert SECRET not in shown + logged


@pytest.mark.parametrize("backend", ["postgresql"])
def test_query_string_password_is_moved_where_sqlalchemy_masks_it(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """A password in the query string becomes the URL's password: the engine
    still connects and commits, and its repr masks the password.
    """
    given = sa.make_url(db.url)
    url = sa.URL.create(
        given.drivername,
        username=given.username,
        host=given.host,
        port=given.port,
        database=given.database,
        query={**given.query, "password": SECRET},
    )
    app = make_app(UOW_ENGINES={"default": url.render_as_string(False)})

    @app.post("/")
    def write() -> str:
        uow.session.add(Item(name="x"))
        return "ok"

    assert app.test_client().post("/").status_code == 200
    assert db.names() == ["x"]
    with app.app_context():
        assert uow.engine.url.password == SECRET
        assert "password" not in uow.engine.url.query
        assert SECRET not in repr(uow.engine)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_path_may_contain_at_signs(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """Only a URL with a user or host is refused for several '@'."""
    path = tmp_path / "a@b@c.db"
    app = make_app(UOW_ENGINES={"default": f"sqlite:///{path}"})
    with app.app_context():
        uow.session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        uow.session.commit()
    assert path.is_file()


def test_known_keys_cover_every_documented_key() -> None:
    """The registry of known keys and docs/config.rst list the same keys."""
    from flask_uow._config import KNOWN_KEYS

    docs = pathlib.Path(__file__).parent.parent / "docs" / "config.rst"
    documented = {
        line.split("::", 1)[1].strip()
        for line in docs.read_text().splitlines()
        if line.startswith(".. data:: UOW_")
    }
    assert documented == set(KNOWN_KEYS)


def test_app_without_uow_keys_but_engines_does_not_warn(tmp_path: pathlib.Path) -> None:
    """Keys of other extensions and Flask itself are not flask_uow's business."""
    app = Flask("quiet", root_path=str(tmp_path))
    app.config.update(UOW_ENGINES={"default": "sqlite://"}, SQLALCHEMY_ECHO=True)
    uow = UnitOfWork(app)  # filterwarnings = error would raise a warning.
    assert app.extensions["uow"] is uow
    uow.dispose_engines(app)
