"""A small ledger: accounts and money transfers, each request one unit of work.

Run it with ``flask --app example_app run``. It uses SQLite in the instance
folder unless ``LEDGER_DATABASE_URL`` names another database, for example
``postgresql+psycopg://user@localhost/ledger``. ``LEDGER_TELEMETRY=console``
(or ``tree``) turns on flask_uow's OpenTelemetry spans, metrics and SQL
comments, printed to the console (see ``example_app/telemetry.py``). With
``LEDGER_TASKS_BROKER`` (a Redis URL) notifications are Celery tasks sent
through the outbox (see ``example_app/tasks.py``).
"""

from __future__ import annotations

import os
import typing as t

import click
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .models import Base

uow = UnitOfWork(metadata=Base)


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Create the ledger app; *config* overrides the defaults (tests use it)."""
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {
        "default": os.environ.get("LEDGER_DATABASE_URL", "sqlite:///ledger.db")
    }
    if config:
        app.config.update(config)
    broker = app.config.get(
        "LEDGER_TASKS_BROKER", os.environ.get("LEDGER_TASKS_BROKER")
    )
    if broker:
        from . import tasks

        tasks.configure(app, broker)
    mode = app.config.get("LEDGER_TELEMETRY", os.environ.get("LEDGER_TELEMETRY"))
    if mode:
        from . import telemetry

        telemetry.setup(app, mode)
    uow.init_app(app)
    if mode:
        with app.app_context():
            telemetry.instrument_engines(uow.engines.values())

    from . import audit
    from . import views

    with app.app_context():  # Tables are created on first start.
        uow.create_all()
    app.register_blueprint(views.bp)
    audit.init_app(app)
    app.cli.add_command(seed)
    return app


@click.command("seed")
@click.option("--balance", default=10_000, help="Opening balance in cents.")
def seed(balance: int) -> None:
    """Open the demo accounts alice, bob and carol if they do not exist."""
    from .models import Account

    with uow.transaction() as session:
        existing = set(session.scalars(sa.select(Account.name)))
        names = [n for n in ("alice", "bob", "carol") if n not in existing]
        session.add_all(Account(name=name, balance=balance) for name in names)
    click.echo(f"Opened {len(names)} account(s).")
