"""Request helpers with Flask-SQLAlchemy's names and behaviour: answer 404
when a row is missing.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import abort

from ._pagination import Pagination

if t.TYPE_CHECKING:
    from ._current import CurrentSession

T = t.TypeVar("T")


def get_or_404(
    session: orm.Session,
    entity: type[T],
    ident: t.Any,
    description: str | None,
) -> T:
    """The instance of *entity* with primary key *ident*, or abort with 404."""
    value = session.get(entity, ident)
    if value is None:
        abort(404, description=description)
    return value


def first_or_404(
    session: orm.Session, statement: sa.Select[t.Any], description: str | None
) -> t.Any:
    """The first result of *statement*, or abort with 404 if it has none."""
    value = session.execute(statement).scalar()
    if value is None:
        abort(404, description=description)
    return value


def one_or_404(
    session: orm.Session, statement: sa.Select[t.Any], description: str | None
) -> t.Any:
    """The only result of *statement*, or abort with 404 if it has none or
    several.
    """
    try:
        return session.execute(statement).scalar_one()
    except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
        abort(404, description=description)


class RequestHelpers:
    """The request helpers of :class:`~flask_uow.UnitOfWork`."""

    if t.TYPE_CHECKING:
        session: CurrentSession

    def get_or_404(
        self, entity: type[T], ident: t.Any, *, description: str | None = None
    ) -> T:
        """Like ``uow.session.get(entity, ident)``, but abort with 404 Not Found
        instead of returning ``None`` when there is no such row.

        .. code-block:: python

            @app.get("/users/<int:id>")
            def user_page(id):
                return render_template("user.html", user=uow.get_or_404(User, id))

        :param entity: The mapped class.
        :param ident: The primary key.
        :param description: The description of the 404 error.

        .. versionadded:: 0.1
        """
        return get_or_404(self.session(), entity, ident, description)

    def first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Like ``uow.session.execute(statement).scalar()``, but abort with 404
        Not Found instead of returning ``None`` when there is no result.

        :param statement: A ``select()``.
        :param description: The description of the 404 error.

        .. versionadded:: 0.1
        """
        return first_or_404(self.session(), statement, description)

    def one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Like ``uow.session.execute(statement).scalar_one()``, but abort with
        404 Not Found instead of raising when there is no result or there are
        several.

        :param statement: A ``select()``.
        :param description: The description of the 404 error.

        .. versionadded:: 0.1
        """
        return one_or_404(self.session(), statement, description)

    def paginate(
        self,
        select: sa.Select[t.Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """Run *select* for one page of its results, and return a
        :class:`~flask_uow.Pagination`.

        Without *page* or *per_page*, the ``page`` and ``per_page`` arguments
        of the request's query string are used, defaulting to 1 and 20 (also
        outside requests).

        With *error_out*, a value of them that is not an integer, a page below
        1, a page size below 1, or a page other than the first that has no
        items, aborts with 404 Not Found. Without it, a bad page becomes 1 and
        a bad page size 20.

        The statement needs an ``order_by`` for the pages to be stable.

        :param select: A ``select()`` of ORM entities or columns; each item is
            the first column of a row, as with ``scalars()``.
        :param page: The page number, starting at 1.
        :param per_page: The greatest number of items on a page.
        :param max_per_page: The greatest page size a request may ask for.
        :param error_out: Abort with 404 on the cases above.
        :param count: Count the items of all pages with a second query, for
            :attr:`~flask_uow.Pagination.total` and
            :attr:`~flask_uow.Pagination.pages`.

        .. versionadded:: 0.1
        """
        return Pagination(
            self.session(),
            select,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )
