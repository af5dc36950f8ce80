"""Flask-SQLAlchemy 3.1's API on flask_uow's unit of work: an app written for
Flask-SQLAlchemy switches by importing ``flask_uow.compat`` instead of
``flask_sqlalchemy``. See :doc:`/migrating`.
"""

from __future__ import annotations

from .extension import SQLAlchemy as SQLAlchemy

__all__ = ["SQLAlchemy"]
