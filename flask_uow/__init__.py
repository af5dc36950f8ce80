from ._extension import UnitOfWork as UnitOfWork
from ._lifecycle import default_commit_veto as default_commit_veto

__all__ = ["UnitOfWork", "default_commit_veto"]
