"""``flask shell`` gets ``db`` and the model classes."""

from __future__ import annotations

import typing as t

from flask import current_app


def add_models_to_shell() -> dict[str, t.Any]:
    """The shell context of the current app's ``SQLAlchemy``: ``db`` and each
    mapped class of ``db.Model`` by class name.
    """
    db = current_app.extensions["sqlalchemy"]
    context: dict[str, t.Any] = {"db": db}
    for mapper in db.Model.registry.mappers:
        context[mapper.class_.__name__] = mapper.class_
    return context
