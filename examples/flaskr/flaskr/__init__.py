"""Flask-SQLAlchemy's flaskr example, ported to flask_uow by following
docs/migrating.rst: a blog with users, posts, 404s and pages of posts.
"""

from __future__ import annotations

import os

import click
from flask import Flask

from flask_uow import UnitOfWork

from .models import Base

uow = UnitOfWork(metadata=Base)


def create_app(test_config=None):
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY="dev",
        # Flask-SQLAlchemy: SQLALCHEMY_DATABASE_URI = "sqlite:///flaskr.sqlite"
        UOW_ENGINES={
            "default": os.environ.get("DATABASE_URL", "sqlite:///flaskr.sqlite")
        },
    )
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.update(test_config)

    uow.init_app(app)
    app.cli.add_command(init_db_command)

    from . import auth
    from . import blog

    app.register_blueprint(auth.bp)
    app.register_blueprint(blog.bp)
    app.add_url_rule("/", endpoint="index")
    return app


def init_db():
    uow.drop_all()
    uow.create_all()


@click.command("init-db")
def init_db_command():
    """Clear the existing data and create new tables."""
    init_db()
    click.echo("Initialized the database.")
