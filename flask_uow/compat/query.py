"""The legacy ``Query`` class of ``Model.query`` and ``db.session.query()``,
with the view helpers of Flask-SQLAlchemy.
"""

from __future__ import annotations

import typing as t

import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import abort

from .pagination import DEFAULT_MAX_PER_PAGE
from .pagination import Pagination
from .pagination import QueryPagination


class Query(orm.Query):  # type: ignore[type-arg]
    """SQLAlchemy's legacy ``Query``, with helpers that abort with 404."""

    def get_or_404(self, ident: t.Any, description: str | None = None) -> t.Any:
        """The row with primary key *ident*, or abort with 404."""
        entity: t.Any = self.column_descriptions[0]["entity"]
        options: t.Any = self._with_options
        value = self.session.get(entity, ident, options=options)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(self, description: str | None = None) -> t.Any:
        """The first result, or abort with 404 when there is none."""
        value = self.first()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(self, description: str | None = None) -> t.Any:
        """The only result, or abort with 404 when there is none or several."""
        try:
            return self.one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def paginate(
        self,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = DEFAULT_MAX_PER_PAGE,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """One page of the results; see
        :class:`~flask_uow.compat.pagination.Pagination`.
        """
        return QueryPagination(
            query=self,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )
