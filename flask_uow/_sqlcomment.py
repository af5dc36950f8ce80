"""SQL comments in the sqlcommenter format: ``key='value'`` pairs, sorted by
key, joined with commas, in one ``/* ... */`` comment at the end of the
statement.

Keys and values are percent-encoded with every byte outside the unreserved set
``A-Z a-z 0-9 - _ . ~`` encoded, so an encoded value can contain no quote, no
``*`` or ``/``, no ``-`` pair that matters, no newline and no backslash: nothing
user-controlled can end the value or the comment. Values are then wrapped in
single quotes, as the format requires.

Drivers whose parameter style is ``format`` or ``pyformat`` (psycopg, psycopg2,
PyMySQL) read ``%`` in the statement text as the start of a placeholder when
the statement has parameters, so for them every ``%`` of the comment is written
``%%``, which the driver turns back into ``%`` before the server sees it.
"""

from __future__ import annotations

import collections.abc as cabc
import urllib.parse

#: Parameter styles in which a literal ``%`` must be written ``%%``.
PERCENT_STYLES = frozenset({"format", "pyformat"})


def encode(text: str) -> str:
    """Percent-encode *text* (UTF-8) leaving only unreserved characters as
    they are.

    :param text: A key or value.
    """
    return urllib.parse.quote(text, safe="")


def format_comment(fields: cabc.Mapping[str, str], *, double_percent: bool) -> str:
    """The comment for *fields*, or ``""`` when there is none to write.

    :param fields: Keys and values; empty values are left out.
    :param double_percent: Write each ``%`` as ``%%``, for drivers that format
        the statement text with its parameters.
    """
    return comment_of(encoded(fields), double_percent=double_percent)


def encoded(fields: cabc.Mapping[str, str]) -> list[tuple[str, str]]:
    """The non-empty *fields* as encoded ``(key, value)`` pairs, sorted."""
    return sorted(
        (encode(key), encode(value)) for key, value in fields.items() if value
    )


def comment_of(pairs: list[tuple[str, str]], *, double_percent: bool) -> str:
    """The comment for *pairs*, encoded and sorted as :func:`encoded` makes
    them, or ``""`` when there are none.

    :param pairs: Encoded keys and values, sorted by key.
    :param double_percent: As for :func:`format_comment`.
    """
    if not pairs:
        return ""
    body = ",".join(f"{key}='{value}'" for key, value in pairs)
    if double_percent:
        body = body.replace("%", "%%")
    return f"/*{body}*/"


def has_comment(statement: str) -> bool:
    """Whether *statement* already holds a comment; the format says such a
    statement is left as it is.

    :param statement: SQL text.
    """
    return "/*" in statement or "--" in statement


def append_comment(statement: str, comment: str) -> str:
    """*statement* with *comment* at its end, before a final semicolon. A
    statement that already holds a comment, and an empty comment, leave the
    statement unchanged.

    :param statement: SQL text.
    :param comment: A comment made by :func:`format_comment`.
    """
    if not comment or has_comment(statement):
        return statement
    stripped = statement.rstrip()
    if stripped.endswith(";"):
        return f"{stripped[:-1]} {comment};"
    return f"{stripped} {comment}"


def parse_comment(statement: str, *, double_percent: bool = False) -> dict[str, str]:
    """The fields of the sqlcommenter comment at the end of *statement*, as
    :func:`format_comment` wrote them; ``{}`` when it has none. For tests and
    for reading a statement log.

    :param statement: SQL text, as the server or the driver saw it.
    :param double_percent: The comment's ``%`` were written ``%%``.
    """
    text = statement.rstrip().removesuffix(";").rstrip()
    if not text.endswith("*/"):
        return {}
    start = text.rfind("/*")
    if start < 0:
        return {}
    body = text[start + 2 : -2]
    if double_percent:
        body = body.replace("%%", "%")
    fields: dict[str, str] = {}
    for pair in body.split(","):
        key, sep, quoted = pair.partition("=")
        if not sep or len(quoted) < 2 or quoted[0] != "'" or quoted[-1] != "'":
            raise ValueError(f"{pair!r} is not a sqlcommenter key='value' pair.")
        fields[urllib.parse.unquote(key)] = urllib.parse.unquote(quoted[1:-1])
    return fields
