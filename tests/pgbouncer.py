"""PgBouncer in front of the suite's PostgreSQL servers, in transaction
pooling mode with a pool smaller than the number of clients, as teams deploy
it; and the checks the deployment tests make through it.

PgBouncer comes from the system (Debian's ``pgbouncer`` package, which
``.ci/run`` installs). When it is missing, the tests that need it fail under
``CI=true`` and are skipped with a message otherwise.

It listens on 127.0.0.1 on a free port only. It reaches PostgreSQL the way
the suite's clients do, usually over the server's Unix socket. As root it
runs as the unprivileged user that owns the ``pgserver`` data folders (it
refuses to run as root, and the socket sits in a folder only that user can
enter).
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t
import uuid
import warnings

import psycopg2
import pytest
import sqlalchemy as sa

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs, see conftest.py
    from pgserver.utils import ensure_user_exists

#: Server connections per pool: fewer than the clients the tests run, so that
#: clients take turns on shared server connections.
POOL_SIZE = 3
#: The Unix user PgBouncer runs as when the suite runs as root (the owner of
#: the ``pgserver`` data folders, see ``tests/pgcluster.py``).
SYSTEM_USER = "pgserver"
#: The role the suite connects as when its server URL names none.
DEFAULT_USER = "postgres"


def find_binary() -> str | None:
    """The ``pgbouncer`` program: on PATH, or where Debian puts it."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    debian = pathlib.Path("/usr/sbin/pgbouncer")
    return str(debian) if debian.exists() else None


def _version(binary: str) -> tuple[int, int]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10
    ).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _libpq_entry(url: sa.URL, database: str) -> str:
    """A ``[databases]`` line's value that reaches *database* on the server
    of *url* (TCP or Unix socket) as its user.
    """
    host = url.query.get("host") or url.host or "localhost"
    if isinstance(host, tuple):  # pragma: no cover - several hosts
        host = host[0]
    parts = {
        "host": host,
        "port": str(url.port or 5432),
        "dbname": database,
        "user": url.username or DEFAULT_USER,
    }
    if url.password:
        parts["password"] = url.password
    return " ".join(f"{key}={value}" for key, value in parts.items())


class Bouncer:
    """One running PgBouncer, its configuration, and its admin console."""

    def __init__(self, binary: str, folder: pathlib.Path, user: str | None) -> None:
        self.binary = binary
        self.folder = folder
        self.user = user
        self.port = _free_port()
        self.ini = folder / "pgbouncer.ini"
        self.log = folder / "pgbouncer.log"
        self.version = _version(binary)
        #: Database aliases: the ``[databases]`` section.
        self.databases: dict[str, str] = {}
        #: The role clients and the admin console use.
        self.role = DEFAULT_USER
        self.process: subprocess.Popen[bytes] | None = None

    # -- configuration ------------------------------------------------------

    def _write(self) -> None:
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.folder / "userlist.txt"),
            "admin_users": self.role,
            "pool_mode": "transaction",
            "default_pool_size": str(POOL_SIZE),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "200",
            "logfile": str(self.log),
            "server_check_delay": "0",
            # A client waiting for a server connection fails after this many
            # seconds instead of PgBouncer's 120: a test that exhausts a pool
            # fails quickly.
            "query_wait_timeout": "5",
        }
        if self.version >= (1, 21):
            # Protocol-level prepared statements are not tracked: what a
            # PgBouncer without that support (before 1.21) does, and the
            # default of 1.21.
            settings["max_prepared_statements"] = "0"
        lines = ["[databases]"]
        lines += [f"{alias} = {entry}" for alias, entry in self.databases.items()]
        lines += ["", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        self.ini.write_text("\n".join(lines) + "\n")
        (self.folder / "userlist.txt").write_text(f'"{self.role}" ""\n')
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.folder, self.ini, self.folder / "userlist.txt"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def add(self, alias: str, server: sa.URL, database: str) -> None:
        """Route the database *alias* of this PgBouncer to *database* on the
        server of *server*, and make PgBouncer read its configuration again.
        """
        self.databases[alias] = _libpq_entry(server, database)
        self._write()
        if self.process is not None:
            self.admin("RELOAD")

    # -- process ------------------------------------------------------------

    def start(self) -> None:
        self._write()
        self.process = subprocess.Popen(
            [self.binary, str(self.ini)],
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"PgBouncer exited ({self.process.returncode}) at start:\n"
                    + self.log_tail()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "PgBouncer did not listen within 15 seconds:\n"
                        + self.log_tail()
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck pooler
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    # -- clients --------------------------------------------------------------

    def url(self, alias: str, driver: str = "psycopg") -> sa.URL:
        """The URL of the database *alias* through this PgBouncer."""
        return sa.URL.create(
            f"postgresql+{driver}",
            username=self.role,
            host="127.0.0.1",
            port=self.port,
            database=alias,
        )

    def admin(self, command: str) -> list[dict[str, t.Any]]:
        """Run *command* on the admin console (``SHOW POOLS``, ``RELOAD``,
        ``DISABLE db``...) and return its rows. psycopg2 speaks the simple
        query protocol, the only one the console understands.
        """
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, dbname="pgbouncer", user=self.role
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(command)
                if cursor.description is None:
                    return []
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def server_settings(self, alias: str) -> dict[int, dict[str, str]]:
        """The session state of every server connection in the pool of
        *alias*, by backend pid: ``default_transaction_read_only`` and
        ``default_transaction_isolation`` (what each new transaction on it
        starts with), ``transaction_read_only``, and how many statements are
        prepared on it.

        PostgreSQL shows no other backend's settings, so they are asked
        through the pool itself: as many clients as the pool has server
        connections each open a transaction and keep it open until all have
        answered. A server connection serves one transaction at a time, so
        each client holds a different one; the pool never has more than
        ``POOL_SIZE``, so every connection it holds is asked, and
        :meth:`server_pids` cross-checks that.
        """
        clients = []
        found: dict[int, dict[str, str]] = {}
        try:
            for _ in range(POOL_SIZE):
                conn = psycopg2.connect(
                    host="127.0.0.1", port=self.port, dbname=alias, user=self.role
                )
                clients.append(conn)
                with conn.cursor() as cursor:  # psycopg2 sends BEGIN first.
                    cursor.execute(
                        "SELECT pg_backend_pid(),"
                        " current_setting('default_transaction_read_only'),"
                        " current_setting('transaction_read_only'),"
                        " current_setting('default_transaction_isolation'),"
                        " (SELECT count(*) FROM pg_prepared_statements)"
                    )
                    pid, default, current, isolation, prepared = cursor.fetchone()
                found[pid] = {
                    "default_transaction_read_only": default,
                    "transaction_read_only": current,
                    "default_transaction_isolation": isolation,
                    "prepared_statements": str(prepared),
                }
        finally:
            for conn in clients:
                conn.rollback()
                conn.close()
        return found

    def server_pids(self, alias: str) -> set[int]:
        """The backend pids of the server connections PgBouncer holds for
        *alias*, as its admin console lists them.
        """
        return {
            int(row["remote_pid"])
            for row in self.admin("SHOW SERVERS")
            if row["database"] == alias and row["remote_pid"]
        }

    def read_only_servers(self, alias: str) -> dict[int, dict[str, str]]:
        """The server connections of *alias* that a new transaction would
        find READ ONLY; empty when none is. Raises if some server connection
        of the pool could not be asked.
        """
        before = self.server_pids(alias)
        settings = self.server_settings(alias)
        missed = before - set(settings)
        if missed:  # pragma: no cover - only if the pool outgrew POOL_SIZE
            raise RuntimeError(f"Server connections not inspected: {missed}.")
        return {
            pid: values
            for pid, values in settings.items()
            if "on"
            in (
                values["default_transaction_read_only"],
                values["transaction_read_only"],
            )
        }

    def changed_servers(self, alias: str) -> dict[int, dict[str, str]]:
        """The server connections of *alias* that a client left session
        state on: READ ONLY, an isolation level other than PostgreSQL's
        default, or a prepared statement. Empty when none has any.
        """
        pristine = {
            "default_transaction_read_only": "off",
            "transaction_read_only": "off",
            "default_transaction_isolation": "read committed",
            "prepared_statements": "0",
        }
        before = self.server_pids(alias)
        settings = self.server_settings(alias)
        missed = before - set(settings)
        if missed:  # pragma: no cover - only if the pool outgrew POOL_SIZE
            raise RuntimeError(f"Server connections not inspected: {missed}.")
        return {pid: v for pid, v in settings.items() if v != pristine}

    def down(self, alias: str) -> None:
        """Make *alias* unreachable: new clients are refused, the connected
        ones are dropped.
        """
        self.admin(f"DISABLE {alias}")
        self.admin(f"KILL {alias}")
        self.admin(f"RESUME {alias}")

    def up(self, alias: str) -> None:
        """Let clients of *alias* connect again."""
        self.admin(f"ENABLE {alias}")


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


@pytest.fixture(scope="session")
def pgbouncer_binary() -> str:
    """The ``pgbouncer`` program; the test fails under ``CI=true`` if it is
    missing, and is skipped otherwise.
    """
    binary = find_binary()
    if binary is None:
        message = (
            "PgBouncer is not installed: the tests of deployment behind a"
            " connection pooler need the 'pgbouncer' program on PATH or in"
            " /usr/sbin. Install it (Debian: 'apt-get install pgbouncer', as"
            " .ci/run does)."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def pgbouncer(pgbouncer_binary: str) -> cabc.Iterator[Bouncer]:
    """A PgBouncer for the whole run, in transaction pooling mode with pools
    of ``POOL_SIZE`` server connections, started when a test first needs it.
    Databases are added to it by the fixtures that make them.
    """
    user = _system_user()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uowbouncer-"))
    bouncer = Bouncer(pgbouncer_binary, folder, user)
    try:
        bouncer.start()
    except Exception as e:  # pragma: no cover - only when PgBouncer breaks
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"Could not start PgBouncer: {e}")
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _admin_sql(server: sa.URL, sql: str) -> None:
    engine = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@contextlib.contextmanager
def pooled_database(
    bouncer: Bouncer, server: sa.URL, prefix: str = "pooled"
) -> cabc.Iterator[tuple[str, str]]:
    """A fresh database on *server*, reachable through *bouncer* under an
    alias of the same name; yield ``(alias, direct URL)``. Dropped after.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    _admin_sql(server, f'CREATE DATABASE "{name}"')
    bouncer.add(name, server, name)
    try:
        yield name, server.set(database=name).render_as_string(False)
    finally:
        with contextlib.suppress(Exception):
            bouncer.admin(f"KILL {name}")
            bouncer.admin(f"RESUME {name}")
        _admin_sql(server, f'DROP DATABASE "{name}" WITH (FORCE)')


class Pooled(t.NamedTuple):
    """A database behind PgBouncer."""

    bouncer: Bouncer
    #: Its name in PostgreSQL and its alias in PgBouncer.
    alias: str
    #: Straight to PostgreSQL, for checks from a separate connection.
    direct: str

    def url(self, driver: str = "psycopg") -> str:
        """Through PgBouncer, with *driver*."""
        return self.bouncer.url(self.alias, driver).render_as_string(False)


@pytest.fixture
def pooled(pgbouncer: Bouncer, postgresql_server: sa.URL) -> cabc.Iterator[Pooled]:
    """A fresh database on the suite's PostgreSQL, reached through
    PgBouncer, dropped after the test.
    """
    with pooled_database(pgbouncer, postgresql_server) as (alias, direct):
        yield Pooled(pgbouncer, alias, direct)
