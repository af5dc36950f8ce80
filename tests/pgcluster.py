"""PostgreSQL servers started from the binaries of the ``pgserver`` package: a
primary and streaming replicas for the read-replica tests and benchmarks.

PostgreSQL refuses to run as root. As root, the binaries run as the
unprivileged system user that ``pgserver`` creates for itself, which owns the
data folders; otherwise they run as the current user. Servers listen on a Unix
socket in their own folder only, never on TCP.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time
import typing as t
import warnings

import sqlalchemy as sa

with warnings.catch_warnings():
    # platformdirs, imported by pgserver, warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions
    from pgserver.utils import ensure_prefix_permissions
    from pgserver.utils import ensure_user_exists

#: The system user the servers run as when this process is root.
SYSTEM_USER = "pgserver"

#: Settings that make a throwaway server start fast and replicate at once.
_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "40",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_prepared_transactions": "10",
    "wal_receiver_status_interval": "1s",
    # A replica cancels its queries that conflict with replay after 1 s
    # instead of 30 s (tables are dropped and refilled between tests).
    "max_standby_streaming_delay": "1s",
}


def _user() -> str | None:
    if os.geteuid() != 0:
        return None
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _run(
    args: list[str],
    user: str | None,
    bin_path: pathlib.Path = POSTGRES_BIN_PATH,
    **kwargs: t.Any,
) -> str:
    """Run a PostgreSQL program; on failure raise with its output."""
    command = [str(bin_path / args[0]), *args[1:]]
    result = subprocess.run(
        command, user=user, capture_output=True, text=True, timeout=60, **kwargs
    )
    if result.returncode:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
            f"\n{result.stderr}"
        )
    return str(result.stdout)


class Server:
    """One PostgreSQL server with its data and socket in *folder*."""

    def __init__(
        self,
        folder: pathlib.Path,
        user: str | None,
        bin_path: pathlib.Path = POSTGRES_BIN_PATH,
        settings: dict[str, str] | None = None,
    ) -> None:
        #: The PostgreSQL programs used, and settings beside _SETTINGS.
        self.bin_path = bin_path
        self.settings = {**_SETTINGS, **(settings or {})}
        self.folder = folder
        self.data = folder / "data"
        self.socket_dir = folder
        self.log = folder / "server.log"
        self.user = user

    def url(self, database: str = "postgres") -> sa.URL:
        """The URL of *database* on this server (psycopg, over the socket)."""
        return sa.URL.create(
            "postgresql+psycopg",
            username="postgres",
            database=database,
            query={"host": str(self.socket_dir)},
        )

    def ctl(self, *args: str) -> str:
        return _run(["pg_ctl", "-D", str(self.data), *args], self.user, self.bin_path)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-k {self.socket_dir} " + " ".join(
            f"-c {name}={value}" for name, value in self.settings.items()
        )
        self.ctl("-w", "-t", "30", "-l", str(self.log), "-o", options, "start")

    @classmethod
    def single(cls, bin_path: pathlib.Path, settings: dict[str, str]) -> Server:
        """Create and start one server from the programs in *bin_path*, in
        a temporary folder that :meth:`remove` deletes.
        """
        user = _user()
        root = pathlib.Path(tempfile.mkdtemp(prefix="uowpg-"))
        server = cls(root / "server", user, bin_path, settings)
        try:
            if user is not None:
                _give_to(root, user)
            server.folder.mkdir()
            if user is not None:
                _give_to(server.folder, user)
            _run(
                ["initdb", "-D", str(server.data), "-U", "postgres"]
                + ["--auth=trust", "--encoding=utf8", "--no-sync"],
                user,
                bin_path,
            )
            server.start()
        except BaseException:
            server.remove()
            raise
        return server

    def remove(self) -> None:
        """Stop the server and delete its folder's parent (see :meth:`single`)."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder.parent, ignore_errors=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; nothing happens if it is not running."""
        if self.running():
            self.ctl("-w", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def scalar(self, sql: str, database: str = "postgres") -> t.Any:
        """Run one statement in autocommit mode and return its first value."""
        engine = sa.create_engine(
            self.url(database), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                result = conn.exec_driver_sql(sql)
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()


class Cluster:
    """A primary and one streaming replica, built in a temporary folder.

    ``Cluster.start()`` runs ``initdb``, starts the primary, copies it with
    ``pg_basebackup -R`` and starts the copy as a hot standby; ``stop()`` stops
    both and removes the folder.
    """

    def __init__(self, primary: Server, replica: Server, root: pathlib.Path) -> None:
        self.primary = primary
        self.replica = replica
        self.root = root

    @classmethod
    def start(cls) -> Cluster:
        user = _user()
        # A short path: a Unix socket path may not exceed about 100 bytes.
        root = pathlib.Path(tempfile.mkdtemp(prefix="uowpg-"))
        primary = Server(root / "primary", user)
        replica = Server(root / "replica", user)
        cluster = cls(primary, replica, root)
        try:
            if user is not None:
                _give_to(root, user)
            for server in (primary, replica):
                server.folder.mkdir()
                if user is not None:
                    _give_to(server.folder, user)
            _run(
                ["initdb", "-D", str(primary.data), "-U", "postgres"]
                + ["--auth=trust", "--encoding=utf8", "--no-sync"],
                user,
            )
            with (primary.data / "pg_hba.conf").open("a") as hba:
                hba.write("local replication all trust\n")
            primary.start()
            _run(
                ["pg_basebackup", "-D", str(replica.data), "-R", "-X", "stream"]
                + ["-h", str(primary.socket_dir), "-U", "postgres", "--no-sync"],
                user,
            )
            replica.start()
            cluster.wait_streaming()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            try:
                server.stop("immediate")
            except Exception:  # pragma: no cover - only when a server breaks
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_streaming(self, timeout: float = 30) -> None:
        """Wait until the replica receives WAL from the primary."""
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"
        while True:
            try:
                if self.replica.scalar(query):
                    return
            except sa.exc.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"The replica did not start streaming; see {self.replica.log}."
                )
            time.sleep(0.02)

    def wait_replayed(self, timeout: float = 30) -> None:
        """Wait until the replica has replayed everything the primary wrote."""
        self._wait_for("pg_last_wal_replay_lsn", timeout)

    def wait_received(self, timeout: float = 30) -> None:
        """Wait until the replica has received (not necessarily replayed)
        everything the primary wrote.
        """
        self._wait_for("pg_last_wal_receive_lsn", timeout)

    def _wait_for(self, function: str, timeout: float) -> None:
        target = self.primary.scalar("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while not self.replica.scalar(f"SELECT {function}() >= '{target}'::pg_lsn"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"The replica's {function}() stayed behind.")
            time.sleep(0.01)

    def pause_replay(self) -> None:
        self.replica.scalar("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.replica.scalar("SELECT pg_wal_replay_resume()")

    def reset(self) -> None:
        """Bring the pair back to normal after a test: both servers running,
        the replica replaying and caught up.
        """
        if not self.replica.running():
            self.replica.start()
        self.resume_replay()
        self.wait_streaming()
        self.wait_replayed()


def _give_to(path: pathlib.Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
