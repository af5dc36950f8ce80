"""A small ledger: accounts and money transfers, each request one unit of work.

Run it with ``flask --app example_app run``. It uses SQLite in the instance
folder unless ``LEDGER_DATABASE_URL`` names another database, for example
``postgresql+psycopg://user@localhost/ledger``.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask

from flask_uow import UnitOfWork

uow = UnitOfWork()


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Create the ledger app; *config* overrides the defaults (tests use it)."""
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {
        "default": os.environ.get("LEDGER_DATABASE_URL", "sqlite:///ledger.db")
    }
    if config:
        app.config.update(config)
    uow.init_app(app)

    from . import audit
    from . import models
    from . import views

    with app.app_context():
        models.Base.metadata.create_all(uow.engine)
    app.register_blueprint(views.bp)
    audit.init_app(app)
    return app
