"""The 404 helpers and pagination, with Flask-SQLAlchemy's names and rules."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import request
from werkzeug.exceptions import NotFound

from flask_uow import Pagination
from flask_uow import UnitOfWork

from .conftest import Database
from .models import Item


def add_items(db: Database, count: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(Item), [{"name": f"item{n:03}"} for n in range(1, count + 1)]
        )


def by_name() -> sa.Select[t.Any]:
    return sa.select(Item).order_by(Item.name)


def test_get_or_404(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """get_or_404 returns the row with that key, or answers 404 with the
    description given.
    """
    add_items(db, 1)

    @flask_app.get("/<int:ident>")
    def show(ident: int) -> str:
        return uow.get_or_404(Item, ident, description="No such item.").name

    client = flask_app.test_client()
    assert client.get("/1").data == b"item001"
    missing = client.get("/2")
    assert missing.status_code == 404
    assert b"No such item." in missing.data


def test_first_or_404(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """first_or_404 returns the first result, or answers 404 when there is none."""
    add_items(db, 3)

    @flask_app.get("/<prefix>")
    def first(prefix: str) -> str:
        statement = by_name().where(Item.name.startswith(prefix))
        return t.cast(str, uow.first_or_404(statement).name)

    client = flask_app.test_client()
    assert client.get("/item").data == b"item001"
    assert client.get("/nothing").status_code == 404


def test_one_or_404(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """one_or_404 returns the only result, and answers 404 for no result and
    for several.
    """
    add_items(db, 2)

    @flask_app.get("/<prefix>")
    def one(prefix: str) -> str:
        statement = sa.select(Item.name).where(Item.name.startswith(prefix))
        return t.cast(str, uow.one_or_404(statement, description="Not one."))

    client = flask_app.test_client()
    assert client.get("/item001").data == b"item001"
    assert client.get("/nothing").status_code == 404
    several = client.get("/item")
    assert several.status_code == 404
    assert b"Not one." in several.data


def page_view(app: Flask, uow: UnitOfWork) -> None:
    """GET /items?...: a page of items; the view's own arguments come from
    query string keys prefixed with 'arg_'.
    """

    @app.get("/items")
    def items() -> dict[str, t.Any]:
        kwargs: dict[str, t.Any] = {
            key[4:]: int(value) if value.isdigit() else value == "true"
            for key, value in request.args.items()
            if key.startswith("arg_")
        }
        page = uow.paginate(by_name(), **kwargs)
        return {
            "names": [item.name for item in page],
            "page": page.page,
            "per_page": page.per_page,
            "total": page.total,
            "pages": page.pages,
            "first": page.first,
            "last": page.last,
            "prev": [page.has_prev, page.prev_num],
            "next": [page.has_next, page.next_num],
        }


def test_paginate_reads_the_query_string(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Without arguments, page and per_page come from the query string,
    defaulting to 1 and 20, and the page knows its neighbours.
    """
    add_items(db, 25)
    page_view(flask_app, uow)
    client = flask_app.test_client()
    first = client.get("/items").json
    assert first is not None
    assert len(first["names"]) == 20
    assert first["names"][0] == "item001"
    assert {k: v for k, v in first.items() if k != "names"} == {
        "page": 1,
        "per_page": 20,
        "total": 25,
        "pages": 2,
        "first": 1,
        "last": 20,
        "prev": [False, None],
        "next": [True, 2],
    }
    second = client.get("/items?page=3&per_page=10").json
    assert second is not None
    assert second["names"] == [f"item0{n}" for n in range(21, 26)]
    assert (second["first"], second["last"], second["pages"]) == (21, 25, 3)
    assert (second["prev"], second["next"]) == ([True, 2], [False, None])


@pytest.mark.parametrize(
    "query",
    [
        "page=x",
        "page=0",
        "page=-1",
        "per_page=x",
        "per_page=0",
        "per_page=-5",
        "page=4&per_page=10",
    ],
)
def test_bad_page_arguments_answer_404(
    flask_app: Flask, uow: UnitOfWork, db: Database, query: str
) -> None:
    """With error_out (the default), a value that is not an integer, below
    1, or a page past the last one, answers 404.
    """
    add_items(db, 25)
    page_view(flask_app, uow)
    assert flask_app.test_client().get(f"/items?{query}").status_code == 404


@pytest.mark.parametrize(
    ("query", "page", "per_page", "count"),
    [
        ("page=x", 1, 20, 20),
        ("page=0", 1, 20, 20),
        ("page=-1&per_page=x", 1, 20, 20),
        ("per_page=0", 1, 20, 20),
        ("per_page=-5&page=2", 2, 20, 5),
        ("page=4&per_page=10", 4, 10, 0),
    ],
)
def test_bad_page_arguments_fall_back_without_error_out(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    query: str,
    page: int,
    per_page: int,
    count: int,
) -> None:
    """With error_out=False, a bad page becomes 1, a bad page size 20, and a
    page past the last one is empty.
    """
    add_items(db, 25)
    page_view(flask_app, uow)
    body = flask_app.test_client().get(f"/items?{query}&arg_error_out=false").json
    assert body is not None
    assert (body["page"], body["per_page"], len(body["names"])) == (
        page,
        per_page,
        count,
    )


def test_empty_first_page_is_not_an_error(flask_app: Flask, uow: UnitOfWork) -> None:
    """The first page of nothing is an empty page with no pages."""
    page_view(flask_app, uow)
    body = flask_app.test_client().get("/items").json
    assert body is not None
    assert (body["names"], body["total"], body["pages"]) == ([], 0, 0)
    assert (body["first"], body["last"], body["next"]) == (0, 0, [False, None])


def test_max_per_page_caps_the_page_size(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """max_per_page limits what the query string or the argument asks for."""
    add_items(db, 25)
    page_view(flask_app, uow)
    client = flask_app.test_client()
    asked = client.get("/items?per_page=100&arg_max_per_page=15").json
    assert asked is not None
    assert (asked["per_page"], len(asked["names"])) == (15, 15)
    given = client.get("/items?arg_per_page=12&arg_max_per_page=5").json
    assert given is not None
    assert given["per_page"] == 5


def test_paginate_without_count(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """count=False runs no count: total is None, pages 0 and there is no next
    page, unless total is set by hand.
    """
    add_items(db, 25)
    page_view(flask_app, uow)
    body = flask_app.test_client().get("/items?per_page=10&arg_count=false").json
    assert body is not None
    assert (body["total"], body["pages"], body["next"]) == (None, 0, [False, None])
    with flask_app.app_context():
        page = uow.paginate(by_name(), per_page=10, count=False)
        page.total = 25
        assert (page.pages, page.has_next, page.next_num) == (3, True, 2)


def test_prev_and_next_query_the_neighbouring_pages(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """next() and prev() return the neighbouring pages with the same size
    and total; past the last page they are empty unless error_out is given.
    """
    add_items(db, 25)
    with flask_app.app_context():
        page = uow.paginate(by_name(), page=2, per_page=10)
        after, before = page.next(), page.prev()
        assert [i.name for i in after] == [f"item0{n}" for n in range(21, 26)]
        assert [i.name for i in before][0] == "item001"
        assert (after.page, after.per_page, after.total) == (3, 10, 25)
        assert before.page == 1
        assert after.next().items == []
        with pytest.raises(NotFound):
            after.next(error_out=True)


def test_paginate_outside_requests_and_over_columns(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Outside requests the defaults are page 1 of 20; a select of a column
    pages over its values.
    """
    add_items(db, 3)
    with flask_app.app_context():
        page = uow.paginate(sa.select(Item.name).order_by(Item.name.desc()))
        assert isinstance(page, Pagination)
        assert (page.page, page.per_page, page.total) == (1, 20, 3)
        assert page.items == ["item003", "item002", "item001"]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("current", "pages", "kwargs", "expected"),
    [
        (1, 0, {}, []),
        (1, 1, {}, [1]),
        (1, 8, {}, [1, 2, 3, 4, 5, None, 7, 8]),
        (50, 100, {}, [1, 2, None, 48, 49, 50, 51, 52, 53, 54, None, 99, 100]),
        (100, 100, {}, [1, 2, None, 98, 99, 100]),
        (4, 9, {}, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (5, 10, {"left_edge": 0, "right_edge": 0}, [None, 3, 4, 5, 6, 7, 8, 9, None]),
        (3, 10, {"left_current": 0, "right_current": 0}, [1, 2, 3, None, 9, 10]),
    ],
)
def test_iter_pages(
    flask_app: Flask,
    uow: UnitOfWork,
    current: int,
    pages: int,
    kwargs: dict[str, int],
    expected: list[int | None],
) -> None:
    """iter_pages gives the edges and the pages around the current one, with
    None for each run of skipped pages.
    """
    with flask_app.app_context():
        page = uow.paginate(by_name(), page=current, per_page=1, error_out=False)
        page.total = pages
        assert list(page.iter_pages(**kwargs)) == expected
