"""Flask-SQLAlchemy's pagination: a base class whose subclasses say how to
fetch one page's items and count all of them, and the two that
:meth:`SQLAlchemy.paginate <flask_uow.compat.SQLAlchemy.paginate>` and
:meth:`Query.paginate <flask_uow.compat.query.Query.paginate>` return.
"""

from __future__ import annotations

import collections.abc as cabc
import math
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import abort
from flask import request

#: The page size when neither the call nor the query string gives one.
DEFAULT_PER_PAGE = 20
#: The largest page size accepted unless ``max_per_page`` says otherwise.
DEFAULT_MAX_PER_PAGE = 100


def _from_query_string(name: str, default: int, error_out: bool) -> int:
    """An int argument of the current request's query string; *default*
    outside a request or when it is absent or not an int (then a 404 when
    *error_out*).
    """
    if not request:
        return default
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        if error_out:
            abort(404)
        return default


class Pagination:
    """One page of results, with the attributes and methods templates use.
    Subclasses implement :meth:`_query_items` and :meth:`_query_count`; the
    keyword arguments they need are kept in ``_query_args``.

    :param page: The page number, from 1; else the ``page`` query argument.
    :param per_page: The page size; else the ``per_page`` query argument, or 20.
    :param max_per_page: The largest page size accepted; ``None`` for no limit.
    :param error_out: Abort with 404 for a page number or size below 1, one
        that is not a number, or an empty page after the first.
    :param count: Count all items (another query); ``total`` is ``None``
        otherwise.
    """

    def __init__(
        self,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = DEFAULT_MAX_PER_PAGE,
        error_out: bool = True,
        count: bool = True,
        **kwargs: t.Any,
    ) -> None:
        self._query_args = kwargs
        if page is None:
            page = _from_query_string("page", 1, error_out)
        if per_page is None:
            per_page = _from_query_string("per_page", DEFAULT_PER_PAGE, error_out)
        if max_per_page is not None:
            per_page = min(per_page, max_per_page)
        if page < 1:
            if error_out:
                abort(404)
            page = 1
        if per_page < 1:
            if error_out:
                abort(404)
            per_page = DEFAULT_PER_PAGE
        #: The current page number, from 1.
        self.page: int = page
        #: The largest number of items on a page.
        self.per_page: int = per_page
        #: The limit on :attr:`per_page`, or ``None``.
        self.max_per_page: int | None = max_per_page
        self._error_out = error_out
        self._count = count
        #: The items on the current page.
        self.items: list[t.Any] = self._query_items()
        if not self.items and page != 1 and error_out:
            abort(404)
        #: The number of items on all pages, ``None`` when not counted.
        self.total: int | None = self._query_count() if count else None

    @property
    def _query_offset(self) -> int:
        """How many items come before the current page."""
        return (self.page - 1) * self.per_page

    def _query_items(self) -> list[t.Any]:
        """The items of the current page; implemented by subclasses."""
        raise NotImplementedError

    def _query_count(self) -> int:
        """The number of items on all pages; implemented by subclasses."""
        raise NotImplementedError

    @property
    def first(self) -> int:
        """The number of the first item on the page, from 1; 0 if it is empty."""
        return self._query_offset + 1 if self.items else 0

    @property
    def last(self) -> int:
        """The number of the last item on the page; 0 if it is empty."""
        if not self.items:
            return 0
        return self._query_offset + min(len(self.items), self.per_page)

    @property
    def pages(self) -> int:
        """The number of pages; 0 when nothing was counted or found."""
        if not self.total:
            return 0
        return math.ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, or ``None``."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one."""
        return self.page < self.pages

    @property
    def next_num(self) -> int | None:
        """The next page's number, or ``None``."""
        return self.page + 1 if self.has_next else None

    def _other(self, page: int, error_out: bool) -> Pagination:
        return type(self)(
            page=page,
            per_page=self.per_page,
            max_per_page=None,  # The page size was checked for this page.
            error_out=error_out,
            count=self._count,
            **self._query_args,
        )

    def prev(self, *, error_out: bool = False) -> Pagination:
        """The previous page, with the same page size."""
        return self._other(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> Pagination:
        """The next page, with the same page size."""
        return self._other(self.page + 1, error_out)

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> cabc.Iterator[int | None]:
        """The page numbers for a pagination widget: the first *left_edge*
        pages, the pages around the current one, and the last *right_edge*
        pages, with ``None`` where numbers are skipped.
        """
        end = self.pages + 1
        if end == 1:
            return
        left = min(1 + left_edge, end)
        yield from range(1, left)
        if left == end:
            return
        start = max(left, self.page - left_current)
        stop = min(self.page + right_current + 1, end)
        if start > left:
            yield None
        yield from range(start, stop)
        if stop >= end:
            return
        right = max(stop, end - right_edge)
        if right > stop:
            yield None
        yield from range(right, end)

    def __iter__(self) -> cabc.Iterator[t.Any]:
        yield from self.items


class SelectPagination(Pagination):
    """A page of a ``select()`` statement's results, run on a session;
    returned by :meth:`SQLAlchemy.paginate
    <flask_uow.compat.SQLAlchemy.paginate>`.
    """

    def _query_items(self) -> list[t.Any]:
        select: sa.Select[t.Any] = self._query_args["select"]
        session: orm.Session = self._query_args["session"]
        statement = select.limit(self.per_page).offset(self._query_offset)
        return list(session.execute(statement).unique().scalars())

    def _query_count(self) -> int:
        select: sa.Select[t.Any] = self._query_args["select"]
        session: orm.Session = self._query_args["session"]
        inner = select.order_by(None).options(orm.lazyload("*")).subquery()
        counted = sa.select(sa.func.count()).select_from(inner)
        return int(session.execute(counted).scalar_one())


class QueryPagination(Pagination):
    """A page of a legacy ``Query``'s results; returned by
    :meth:`Query.paginate <flask_uow.compat.query.Query.paginate>`.
    """

    def _query_items(self) -> list[t.Any]:
        query: orm.Query[t.Any] = self._query_args["query"]
        return query.limit(self.per_page).offset(self._query_offset).all()

    def _query_count(self) -> int:
        query: orm.Query[t.Any] = self._query_args["query"]
        return query.order_by(None).count()
