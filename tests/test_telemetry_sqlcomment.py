"""The sqlcommenter serialization on its own: encoding, order, escaping, and
where the comment goes in a statement. (Phase B moves the module under test
into flask_uow.)
"""

from __future__ import annotations

import sqlite3

import pytest

from flask_uow._sqlcomment import append_comment
from flask_uow._sqlcomment import format_comment
from flask_uow._sqlcomment import parse_comment

#: Values built to end the quoted value, the comment, or the statement.
HOSTILE = [
    "*/ DROP TABLE items; /*",
    "a'b",
    "a\\'b",
    '"double"',
    "line\nbreak\r\n",
    "-- rest of line",
    "%s %(name)s %%",
    "/items/<int:id>",
    "é ✓ \x00",
    "a,b=c",
]


def test_pairs_are_sorted_quoted_and_joined() -> None:
    """Keys sort lexicographically, values are single-quoted, pairs joined
    with commas, all in one comment.
    """
    comment = format_comment(
        {"route": "/items", "controller": "items", "method": "GET"},
        double_percent=False,
    )
    assert comment == "/*controller='items',method='GET',route='%2Fitems'*/"


def test_empty_values_and_empty_fields_make_no_comment() -> None:
    """A field without a value is left out; no field, no comment."""
    assert format_comment({"a": "", "b": "x"}, double_percent=False) == "/*b='x'*/"
    assert format_comment({"a": ""}, double_percent=False) == ""
    assert append_comment("SELECT 1", "") == "SELECT 1"


@pytest.mark.parametrize("value", HOSTILE)
def test_nothing_in_a_value_can_close_it(value: str) -> None:
    """A hostile value stays inside its quotes and inside the comment, and
    reads back unchanged.
    """
    comment = format_comment({"route": value}, double_percent=False)
    body = comment[2:-2]
    # "--" is harmless inside a block comment; it stays unencoded.
    for forbidden in ("*/", "/*", "\n", "\r", "\\", '"', "\x00", ";"):
        assert forbidden not in body
    assert body.count("'") == 2
    assert parse_comment(f"SELECT 1 {comment}") == {"route": value}


@pytest.mark.parametrize("value", HOSTILE)
def test_sqlite_runs_the_commented_statement(value: str) -> None:
    """SQLite parses the commented statement as the statement alone."""
    statement = append_comment(
        "SELECT 1", format_comment({"route": value}, double_percent=False)
    )
    with sqlite3.connect(":memory:") as conn:
        assert conn.execute(statement).fetchall() == [(1,)]


def test_percent_is_doubled_for_format_paramstyles() -> None:
    """For psycopg-style drivers each % of the encoding is written %%, and
    reads back the same.
    """
    comment = format_comment({"route": "/a b"}, double_percent=True)
    assert comment == "/*route='%%2Fa%%20b'*/"
    statement = append_comment("SELECT 1", comment)
    assert parse_comment(statement, double_percent=True) == {"route": "/a b"}


def test_comment_goes_before_a_final_semicolon() -> None:
    """The comment is the last thing of the statement, before a semicolon."""
    assert append_comment("SELECT 1;  ", "/*a='b'*/") == "SELECT 1 /*a='b'*/;"
    assert append_comment("SELECT 1\n", "/*a='b'*/") == "SELECT 1 /*a='b'*/"


@pytest.mark.parametrize(
    "statement", ["SELECT 1 -- mine", "SELECT /* hint */ 1", "/* x */ SELECT 1"]
)
def test_a_statement_with_a_comment_is_left_alone(statement: str) -> None:
    """As the format says, a statement that already has a comment is not
    changed.
    """
    assert append_comment(statement, "/*a='b'*/") == statement


def test_keys_are_encoded_too() -> None:
    """A key is percent-encoded like a value."""
    assert format_comment({"a'b": "c"}, double_percent=False) == "/*a%27b='c'*/"


def test_a_malformed_comment_is_refused() -> None:
    """Reading back a comment that is not key='value' pairs says so."""
    with pytest.raises(ValueError, match="is not a sqlcommenter"):
        parse_comment("SELECT 1 /*just text*/")
    assert parse_comment("SELECT 1") == {}
