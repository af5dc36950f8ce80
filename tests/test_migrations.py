"""Schema migrations through Flask-Migrate's ``flask db`` commands (its single
and multi-database templates, unchanged) and through plain Alembic with the
``env.py`` the documentation shows, run as a user runs them: in a subprocess.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

ROOT = pathlib.Path(__file__).parent.parent

APP = """
import os

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask_migrate import Migrate

from flask_uow import UnitOfWork


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    if os.environ.get("MIGRAPP_V2"):
        email: orm.Mapped[str | None] = orm.mapped_column(sa.String(100))


audit = sa.MetaData(info={"bind_key": "audit"})
sa.Table("audit_log", audit, sa.Column("id", sa.Integer, primary_key=True))

engines = {"default": os.environ["MIGRAPP_URL"]}
if os.environ.get("MIGRAPP_AUDIT_URL"):
    engines["audit"] = os.environ["MIGRAPP_AUDIT_URL"]
    uow = UnitOfWork(metadata=[Base, audit])
else:
    uow = UnitOfWork(metadata=Base)


def create_app():
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = engines
    uow.init_app(app)
    Migrate(app, uow)
    return app
"""

#: The env.py of the documentation's plain Alembic recipe.
ALEMBIC_ENV = """
from alembic import context

from migrapp import create_app
from migrapp import uow

app = create_app()

with app.app_context():
    with uow.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=uow.metadata)
        with context.begin_transaction():
            context.run_migrations()
"""


@pytest.fixture
def audit_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> cabc.Iterator[str]:
    """A second empty database on the backend, for the 'audit' bind key."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    server: sa.URL = request.getfixturevalue("postgresql_server")
    name = f"flask_uow_audit_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_url(db_url: str) -> str:
    """The test database, without the suite's own tables."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        existing = sa.MetaData()
        existing.reflect(conn)
        existing.drop_all(conn)  # In the order foreign keys need.
    engine.dispose()
    return db_url


class Project:
    """A user's project folder with the app, where commands are run."""

    def __init__(self, path: pathlib.Path, env: dict[str, str]) -> None:
        self.path = path
        (path / "migrapp.py").write_text(APP)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(path)]),
            "FLASK_APP": "migrapp",
            **env,
        }

    def run(self, *args: str, **env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", *args],
            cwd=self.path,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        return output


def schema(url: str) -> dict[str, set[str]]:
    """Table names and their columns, as another client sees them."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        inspector = sa.inspect(engine)
        return {
            name: {column["name"] for column in inspector.get_columns(name)}
            for name in inspector.get_table_names()
        }
    finally:
        engine.dispose()


def test_flask_migrate(empty_url: str, tmp_path: pathlib.Path) -> None:
    """Migrate(app, uow) with 'flask db init': autogenerate, upgrade and
    downgrade create, change and drop the tables.
    """
    project = Project(tmp_path, {"MIGRAPP_URL": empty_url})
    project.run("flask", "db", "init")
    assert "Detected added table 'users'" in project.run(
        "flask", "db", "migrate", "-m", "users"
    )
    project.run("flask", "db", "upgrade")
    assert schema(empty_url) == {
        "alembic_version": {"version_num"},
        "users": {"id", "name"},
    }
    assert "Detected added column 'users.email'" in project.run(
        "flask", "db", "migrate", "-m", "email", MIGRAPP_V2="1"
    )
    project.run("flask", "db", "upgrade")
    assert schema(empty_url)["users"] == {"id", "name", "email"}
    project.run("flask", "db", "downgrade")
    assert schema(empty_url)["users"] == {"id", "name"}
    project.run("flask", "db", "downgrade", "base")
    assert schema(empty_url) == {"alembic_version": {"version_num"}}


def test_flask_migrate_multidb(
    empty_url: str, audit_url: str, tmp_path: pathlib.Path
) -> None:
    """With 'flask db init --multidb', each bind key's tables are migrated on
    its own engine.
    """
    project = Project(
        tmp_path, {"MIGRAPP_URL": empty_url, "MIGRAPP_AUDIT_URL": audit_url}
    )
    project.run("flask", "db", "init", "--multidb")
    output = project.run("flask", "db", "migrate", "-m", "initial")
    assert "Detected added table 'users'" in output
    assert "Detected added table 'audit_log'" in output
    project.run("flask", "db", "upgrade")
    version = {"alembic_version": {"version_num"}}
    assert schema(empty_url) == {**version, "users": {"id", "name"}}
    assert schema(audit_url) == {**version, "audit_log": {"id"}}
    project.run("flask", "db", "downgrade")
    assert schema(empty_url) == version
    assert schema(audit_url) == version


def test_plain_alembic(empty_url: str, tmp_path: pathlib.Path) -> None:
    """Alembic alone, with the documented env.py, autogenerates from
    uow.metadata and migrates uow.engine.
    """
    project = Project(tmp_path, {"MIGRAPP_URL": empty_url})
    project.run("alembic", "init", "migrations")
    (tmp_path / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    project.run("alembic", "revision", "--autogenerate", "-m", "users")
    [script] = (tmp_path / "migrations" / "versions").glob("*_users.py")
    assert "op.create_table('users'" in script.read_text()
    project.run("alembic", "upgrade", "head")
    assert schema(empty_url)["users"] == {"id", "name"}
    project.run("alembic", "downgrade", "base")
    assert schema(empty_url) == {"alembic_version": {"version_num"}}
