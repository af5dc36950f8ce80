"""The ledger's Celery worker: ``celery -A example_app.worker:celery worker``, with
``LEDGER_DATABASE_URL`` and ``LEDGER_TASKS_BROKER`` in the environment.
Tasks run in the app's context (``@uow.once`` pushes it).
"""

from __future__ import annotations

from . import create_app
from .tasks import celery as celery

app = create_app()
