"""Pages of a select statement's results, with the attributes Flask-SQLAlchemy's
pagination has, so that templates written for it keep working.
"""

from __future__ import annotations

import collections.abc as cabc
import math
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import abort
from flask import has_request_context
from flask import request

DEFAULT_PER_PAGE = 20


def _query_arg(name: str, default: int, error_out: bool) -> int:
    """An integer from the query string, or *default* if it is absent; a value
    that is not an integer aborts with 404, or gives *default*.
    """
    if not has_request_context():
        return default
    try:
        return int(request.args.get(name, default))
    except (TypeError, ValueError):
        if error_out:
            abort(404)
        return default


def page_arguments(
    page: int | None, per_page: int | None, max_per_page: int | None, error_out: bool
) -> tuple[int, int]:
    """The page number and page size to use, from the arguments or else the
    query string, with the rules for out-of-range values.
    """
    if page is None:
        page = _query_arg("page", 1, error_out)
    if per_page is None:
        per_page = _query_arg("per_page", DEFAULT_PER_PAGE, error_out)
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
    return page, per_page


class Pagination:
    """One page of the results of a select statement, returned by
    :meth:`~flask_uow.UnitOfWork.paginate`. It has the attributes and
    methods of Flask-SQLAlchemy's pagination object. Iterating over it
    iterates over :attr:`items`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        session: orm.Session,
        select: sa.Select[t.Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> None:
        self._session = session
        self._select = select
        page, per_page = page_arguments(page, per_page, max_per_page, error_out)
        #: The number of this page, starting at 1.
        self.page: int = page
        #: The greatest number of items on a page.
        self.per_page: int = per_page
        #: The limit given for :attr:`per_page`, or ``None``.
        self.max_per_page: int | None = max_per_page
        statement = select.limit(per_page).offset((page - 1) * per_page)
        #: The items on this page.
        self.items: list[t.Any] = list(session.execute(statement).unique().scalars())
        if not self.items and page != 1 and error_out:
            abort(404)
        #: The number of items on all pages, or ``None`` if it was not counted
        #: (``count=False``); it may be set by hand then.
        self.total: int | None = self._count() if count else None

    def _count(self) -> int:
        inner = self._select.options(orm.lazyload("*")).order_by(None).subquery()
        counted = sa.select(sa.func.count()).select_from(inner)
        return int(self._session.execute(counted).scalar_one())

    @property
    def first(self) -> int:
        """The number (counting from 1 over all pages) of the first item on
        this page, or 0 if the page is empty.
        """
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The number of the last item on this page, or 0 if it is empty."""
        return max(self.first, self.first + len(self.items) - 1)

    @property
    def pages(self) -> int:
        """The number of pages; 0 if there are no items or no :attr:`total`."""
        if not self.total:
            return 0
        return math.ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """There is a page before this one."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The number of the previous page, or ``None`` on the first."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """There is a page after this one (always ``False`` without
        :attr:`total`).
        """
        return self.page < self.pages

    @property
    def next_num(self) -> int | None:
        """The number of the next page, or ``None`` on the last."""
        return self.page + 1 if self.has_next else None

    def _other(self, page: int, error_out: bool) -> Pagination:
        other = type(self)(
            self._session,
            self._select,
            page=page,
            per_page=self.per_page,
            max_per_page=self.max_per_page,
            error_out=error_out,
            count=False,
        )
        other.total = self.total
        return other

    def prev(self, *, error_out: bool = False) -> Pagination:
        """Query the previous page, in the current unit of work's session.

        :param error_out: Abort with 404 if that page is out of range.
        """
        return self._other(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> Pagination:
        """Query the next page, in the current unit of work's session.

        :param error_out: Abort with 404 if that page is empty.
        """
        return self._other(self.page + 1, error_out)

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> cabc.Iterator[int | None]:
        """Page numbers for a pagination widget: the first *left_edge* pages,
        the pages from *left_current* before the current one to
        *right_current* after it, and the last *right_edge* pages, with
        ``None`` where pages are skipped.

        .. code-block:: jinja

            {% for number in page.iter_pages() %}
              {% if number is none %}…{% else %}{{ number }}{% endif %}
            {% endfor %}
        """
        last = self.pages
        wanted = [
            (1, left_edge),
            (self.page - left_current, self.page + right_current),
            (last - right_edge + 1, last),
        ]
        shown = 0  # The last page number given so far.
        for start, end in wanted:
            start = max(start, shown + 1)
            end = min(end, last)
            if start > end:
                continue
            if start > shown + 1:
                yield None
            yield from range(start, end + 1)
            shown = end
        if 0 < shown < last:
            yield None

    def __iter__(self) -> cabc.Iterator[t.Any]:
        return iter(self.items)
