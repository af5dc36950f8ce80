from . import signals as signals
from ._aborted import TransactionAbortedError as TransactionAbortedError
from ._brokers import CeleryBroker as CeleryBroker
from ._brokers import RQBroker as RQBroker
from ._changes import Change as Change
from ._config import UnknownConfigKeyWarning as UnknownConfigKeyWarning
from ._current import CurrentSession as CurrentSession
from ._detached import DetachedWriteWarning as DetachedWriteWarning
from ._extension import UnitOfWork as UnitOfWork
from ._lifecycle import default_commit_veto as default_commit_veto
from ._pagination import Pagination as Pagination
from ._query_info import get_recorded_queries as get_recorded_queries
from ._query_info import NPlusOneWarning as NPlusOneWarning
from ._query_info import QueryRecord as QueryRecord
from ._recovery import RecoveryIncompleteError as RecoveryIncompleteError
from ._recovery import Resolution as Resolution
from ._retry import is_transient_error as is_transient_error
from .signals import after_begin as after_begin
from .signals import after_commit as after_commit
from .signals import after_rollback as after_rollback
from .signals import before_commit as before_commit
from .signals import before_retry as before_retry
from .testing import CapturedTask as CapturedTask
from .testing import Isolation as Isolation

__all__ = [
    "CapturedTask",
    "CeleryBroker",
    "Change",
    "CurrentSession",
    "DetachedWriteWarning",
    "Isolation",
    "Pagination",
    "NPlusOneWarning",
    "QueryRecord",
    "RQBroker",
    "RecoveryIncompleteError",
    "Resolution",
    "TransactionAbortedError",
    "UnitOfWork",
    "UnknownConfigKeyWarning",
    "after_begin",
    "after_commit",
    "after_rollback",
    "before_commit",
    "before_retry",
    "default_commit_veto",
    "get_recorded_queries",
    "is_transient_error",
    "signals",
]
