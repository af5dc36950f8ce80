"""An app that queries its database while it is created, as apps that check
their schema or warm a cache do, for ``gunicorn --preload``: the query leaves
a connection in the pool of the master process, which forks the workers.

Its engine entry comes as JSON in ``PRELOAD_ENTRY``. ``POST /items`` adds a
row that records which worker process served it and which connection the
worker used: the backend pid on a direct PostgreSQL connection, the local
TCP address of the socket to a pooler (whose backend changes per
transaction). A connection used by two workers shows in the table.
"""

from __future__ import annotations

import json
import os
import socket

import sqlalchemy as sa
from flask import Flask
from flask import request

from flask_uow import UnitOfWork

uow = UnitOfWork()
metadata = sa.MetaData()
served = sa.Table(
    "served",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False, unique=True),
    sa.Column("worker", sa.Integer, nullable=False),
    sa.Column("connection", sa.String(100), nullable=False),
)


def _connection_id(connection: sa.Connection) -> str:
    dbapi = connection.connection.dbapi_connection
    fd = dbapi.pgconn.socket if hasattr(dbapi, "pgconn") else dbapi.fileno()  # type: ignore[union-attr, attr-defined]
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family == socket.AF_INET:
            host, port = sock.getsockname()
            return f"tcp:{host}:{port}"
    return f"pid:{connection.exec_driver_sql('SELECT pg_backend_pid()').scalar()}"


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = {"default": json.loads(os.environ["PRELOAD_ENTRY"])}
    uow.init_app(app)
    with app.app_context():  # The query at creation.
        uow.session.execute(sa.text("SELECT 1"))

    @app.post("/items")
    def add() -> tuple[str, int]:
        connection = uow.session.connection()
        uow.session.execute(
            served.insert().values(
                name=request.form["name"],
                worker=os.getpid(),
                connection=_connection_id(connection),
            )
        )
        return "added", 201

    return app
