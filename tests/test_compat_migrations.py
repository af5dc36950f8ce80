"""Flask-Migrate with a flask_uow.compat app: the ``env.py`` that ``flask db
init`` writes today, and the older template that reads
``SQLALCHEMY_DATABASE_URI`` from the config, run as a user runs them.
"""

from __future__ import annotations

import pathlib

from .test_migrations import Project
from .test_migrations import schema

APP = """
import os

from flask import Flask
from flask_migrate import Migrate

from flask_uow.compat import SQLAlchemy

db = SQLAlchemy()


class User(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(50))
    if os.environ.get("MIGRAPP_V2"):
        email = db.Column(db.String(100))


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["MIGRAPP_URL"]
    db.init_app(app)
    Migrate(app, db)
    return app
"""

#: The env.py of Flask-Migrate 2.x's template, as older projects still have.
OLD_ENV = """
from logging.config import fileConfig

from alembic import context
from flask import current_app
from sqlalchemy import engine_from_config
from sqlalchemy import pool

config = context.config
fileConfig(config.config_file_name)
config.set_main_option(
    "sqlalchemy.url",
    current_app.config.get("SQLALCHEMY_DATABASE_URI").replace("%", "%%"),
)
target_metadata = current_app.extensions["migrate"].db.metadata


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def test_current_and_old_templates(tmp_path: pathlib.Path) -> None:
    """'flask db init', migrate and upgrade with generated table names; then,
    with the older env.py that reads SQLALCHEMY_DATABASE_URI, migrate, upgrade
    and downgrade. On SQLite only: the templates do nothing per backend that
    tests/test_migrations.py does not cover on PostgreSQL.
    """
    url = f"sqlite:///{tmp_path / 'app.db'}"
    project = Project(tmp_path, {"MIGRAPP_URL": url})
    (tmp_path / "migrapp.py").write_text(APP)
    project.run("flask", "db", "init")
    assert "Detected added table 'user'" in project.run("flask", "db", "migrate")
    project.run("flask", "db", "upgrade")
    assert schema(url)["user"] == {"id", "name"}
    (tmp_path / "migrations" / "env.py").write_text(OLD_ENV)
    assert "Detected added column 'user.email'" in project.run(
        "flask", "db", "migrate", MIGRAPP_V2="1"
    )
    project.run("flask", "db", "upgrade")
    assert schema(url)["user"] == {"id", "name", "email"}
    project.run("flask", "db", "downgrade")
    assert schema(url)["user"] == {"id", "name"}
