"""The configuration keys, and the checks ``init_app`` runs on them before
anything is created: every mistake is an error naming the key and the fix,
and no message ever shows a password.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import math
import typing as t
import warnings

import sqlalchemy as sa

#: Every configuration key flask_uow reads. ``init_app`` warns about any other
#: key that starts with ``UOW_``. A new key is added here, beside its default
#: in ``init_app`` and its entry in docs/config.rst.
KNOWN_KEYS = frozenset(
    {
        "UOW_ENGINES",
        "UOW_SESSION_OPTIONS",
        "UOW_AUTOCOMMIT",
        "UOW_RETRY_DELAY",
        "UOW_RETRY_MAX_DELAY",
        "UOW_TWO_PHASE",
        "UOW_RECORD_QUERIES",
        "UOW_N_PLUS_ONE",
        "UOW_N_PLUS_ONE_THRESHOLD",
        "UOW_SERVER_TIMING",
        "UOW_SLOW_QUERY_MS",
        "UOW_SLOW_QUERY_PARAMETERS",
        "UOW_REPLICA_MAX_LAG",
        "UOW_REPLICA_WAIT",
        "UOW_REPLICA_BACKOFF",
        "UOW_REPLICA_WINDOW",
        "UOW_REPLICA_COOKIE",
        "UOW_OUTBOX",
        "UOW_OUTBOX_BROKER",
        "UOW_OUTBOX_GRACE",
        "UOW_OUTBOX_RETRY_DELAY",
        "UOW_OUTBOX_RETRY_MAX_DELAY",
        "UOW_OUTBOX_DEAD_AFTER",
        "UOW_OUTBOX_KEEP",
        "UOW_OUTBOX_REDELIVER_AFTER",
        "UOW_DETACHED_WRITES",
        "UOW_OPENTELEMETRY",
        "UOW_SQL_COMMENTS",
    }
)

#: The longest retry wait accepted, in seconds: anything longer is a value
#: given in the wrong unit, and ``time.sleep`` overflows far above it.
MAX_RETRY_DELAY = 3600

_RESERVED_SESSION_OPTIONS = {
    "bind": "the 'default' entry of 'UOW_ENGINES' is the session's bind",
    "class_": "flask_uow's session class routes statements by bind key",
    "engines": "flask_uow passes the engines of 'UOW_ENGINES' itself",
    "uow_unit": "flask_uow ties each session to its unit of work itself",
    "uow_route": "flask_uow routes each session to replicas itself",
}

_NO_AUTOCOMMIT = (
    " With driver-level autocommit every statement is committed as soon as it"
    " runs, so the unit of work could not roll back the work of a request that"
    " fails. Remove it; to run a statement outside a transaction, use a"
    " connection of 'uow.engine' with"
    " .execution_options(isolation_level='AUTOCOMMIT')."
)

_DICT_OPTIONS = {
    "connect_args": "{'sslmode': 'require'}",
    "execution_options": "{'isolation_level': 'REPEATABLE READ'}",
}

_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

#: Parts of a key name that mark its value as a credential.
_SECRET_NAMES = ("pass", "pwd", "secret", "token")


class UnknownConfigKeyWarning(UserWarning):
    """Warned by :meth:`~flask_uow.UnitOfWork.init_app` for a key of the app's
    config that starts with ``UOW_`` but is not a flask_uow setting, most
    likely a misspelled one. The message names the closest known key.

    .. versionadded:: 0.1
    """


def check_config(config: cabc.Mapping[str, t.Any]) -> None:
    """Check the keys that hold plain values, and warn about unknown keys."""
    for key in config:
        if isinstance(key, str) and key.upper().startswith("UOW_"):
            if key not in KNOWN_KEYS:
                warnings.warn(_unknown_key(key), UnknownConfigKeyWarning, stacklevel=3)
    autocommit = config["UOW_AUTOCOMMIT"]
    if not isinstance(autocommit, bool):
        raise TypeError(
            "'UOW_AUTOCOMMIT' must be True or False, not"
            f" {type(autocommit).__name__!r}. For example"
            " app.config['UOW_AUTOCOMMIT'] = False."
        )
    for key in ("UOW_RETRY_DELAY", "UOW_RETRY_MAX_DELAY"):
        value = config[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(
                f"{key!r} must be a number of seconds, not {value!r}. For"
                f" example app.config[{key!r}] = 0.1."
            )
        if not finite(value):
            raise ValueError(
                f"{key!r} is {_shown(value)}, which is not a number of seconds to wait."
                f" Use a finite number from 0 to {MAX_RETRY_DELAY}."
            )
        if value < 0:
            raise ValueError(f"{key!r} is negative ({value!r}). Use 0 or more.")
        if value > MAX_RETRY_DELAY:
            raise ValueError(
                f"{key!r} is {value!r} seconds, more than an hour. The value is"
                f" in seconds: use at most {MAX_RETRY_DELAY}, for example 0.05"
                " for 50 milliseconds."
            )


def finite(value: int | float) -> bool:
    """Whether *value* is a finite number that a float can hold: an integer
    too large for one (``10**400``) is not.
    """
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: t.Any) -> str:
    """*value* for a message: a huge integer by its size, not its digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        # str() of an integer past 4300 digits raises; its size is enough.
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), sorted(KNOWN_KEYS), n=1)
    hint = (
        f"Did you mean {close[0]!r}?"
        if close
        else f"The known keys are {', '.join(repr(k) for k in sorted(KNOWN_KEYS))}."
    )
    return f"{key!r} is not a flask_uow setting, so it is ignored. {hint}"


def session_options(value: t.Any) -> dict[str, t.Any]:
    """Check ``UOW_SESSION_OPTIONS``; the session's own checks run later, when
    ``init_app`` makes a first session.
    """
    if not isinstance(value, cabc.Mapping):
        raise TypeError(
            "'UOW_SESSION_OPTIONS' must be a dict of 'sqlalchemy.orm.Session'"
            f" keyword arguments, not {type(value).__name__!r}."
        )
    for name, reason in _RESERVED_SESSION_OPTIONS.items():
        if name in value:
            raise ValueError(
                f"'UOW_SESSION_OPTIONS' must not set {name!r}: {reason}. Remove"
                " it, and configure engines in 'UOW_ENGINES'."
            )
    if "autobegin" in value and not value["autobegin"]:
        raise ValueError(
            "'UOW_SESSION_OPTIONS' must not set 'autobegin' to False: the unit of"
            " work begins its transaction when the session first runs a"
            " statement, so every request would fail. Remove the option."
        )
    return dict(value)


def session_options_error(e: Exception) -> Exception:
    """The error for session options that the session itself refused."""
    message = (
        f"'UOW_SESSION_OPTIONS' has an option the session does not accept: {e}."
        " Use only keyword arguments of 'sqlalchemy.orm.Session', with the values"
        " it documents."
    )
    return TypeError(message) if isinstance(e, TypeError) else ValueError(message)


def check_url(key: str, raw: object, url: sa.URL) -> sa.URL:
    """Refuse a URL string that cannot have been parsed as meant, and move a
    password given in the query string to the URL's password field, where
    SQLAlchemy masks it in ``repr(engine)``.
    """
    networked = url.host is not None or url.username is not None
    if isinstance(raw, str) and raw.count("@") > 1 and networked:
        raise ValueError(
            f"{key} has more than one '@', so it cannot be split into its user,"
            " password and host reliably. Percent-encode each '@' that is part"
            " of the password or of another component as '%40', for example"
            " with urllib.parse.quote_plus(password)."
        )
    password = url.query.get("password")
    if isinstance(password, str) and not url.password:
        if url.get_backend_name() != "sqlite":
            url = url.difference_update_query(["password"]).set(password=password)
    return url


def describe_url(url: sa.URL) -> str:
    """The URL as flask_uow's messages show it: no user, password or query."""
    shown = sa.URL.create(
        url.drivername, host=url.host, port=url.port, database=url.database
    )
    return shown.render_as_string()


def secrets_of(raw: object, url: sa.URL | None, options: dict[str, t.Any]) -> list[str]:
    """Every credential a message about this engine entry could repeat."""
    found: list[str] = []
    if isinstance(raw, str) and "@" in raw.partition("://")[2]:
        userinfo = raw.partition("://")[2].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        found += [password, *password.split("@")]
    if url is not None:
        if url.password is not None:
            found.append(str(url.password))
        for name, value in url.query.items():
            if any(part in name.lower() for part in _SECRET_NAMES):
                found += [value] if isinstance(value, str) else list(value)
    connect_args = options.get("connect_args")
    if isinstance(connect_args, cabc.Mapping):
        for name, value in connect_args.items():
            lowered = str(name).lower()
            if isinstance(value, str) and any(p in lowered for p in _SECRET_NAMES):
                found.append(value)
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, secrets: cabc.Iterable[str]) -> str:
    """*text* with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def check_engine_options(key: str, url: sa.URL, options: dict[str, t.Any]) -> None:
    """Check the ``create_engine`` arguments of one engine entry that
    SQLAlchemy would accept now and fail on later, and refuse driver-level
    autocommit, which the unit of work cannot roll back.
    """
    poolclass = options.get("poolclass")
    if poolclass is not None and not (
        isinstance(poolclass, type) and issubclass(poolclass, sa.pool.Pool)
    ):
        raise TypeError(
            f"{key}['poolclass'] must be a pool class, not"
            f" {type(poolclass).__name__!r}. Import the class and pass it, for"
            " example 'poolclass': sqlalchemy.pool.NullPool."
        )
    for name, example in _DICT_OPTIONS.items():
        if not isinstance(options.get(name, {}), cabc.Mapping):
            raise TypeError(
                f"{key}[{name!r}] must be a dict, not"
                f" {type(options[name]).__name__!r}. For example {name!r}:"
                f" {example}."
            )
    for name in ("pool_size", "max_overflow"):
        value = options.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"{key}[{name!r}] must be an int, not {type(value).__name__!r}."
                f" For example {name!r}: 5."
            )
    for name in ("pool_timeout", "pool_recycle"):
        value = options.get(name, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(
                f"{key}[{name!r}] must be a number of seconds, not"
                f" {type(value).__name__!r}. For example {name!r}: 30."
            )
        if not finite(value):
            raise ValueError(
                f"{key}[{name!r}] is {_shown(value)}. Use a finite number of seconds."
            )
    for where, level in isolation_levels(key, options):
        if not isinstance(level, str):
            raise TypeError(
                f"{where} must be an isolation level name, not"
                f" {type(level).__name__!r}. For example 'READ COMMITTED'."
            )
        if normal_level(level) == "AUTOCOMMIT":
            raise ValueError(f"{where} is 'AUTOCOMMIT'.{_NO_AUTOCOMMIT}")
    if options.get("connect_args", {}).get("autocommit"):
        raise ValueError(
            f"{key}['connect_args'] turns 'autocommit' on.{_NO_AUTOCOMMIT}"
        )
    autocommit = url.query.get("autocommit")
    if isinstance(autocommit, str) and autocommit.lower() not in _FALSE_WORDS:
        raise ValueError(
            f"{key} turns 'autocommit' on in its query string.{_NO_AUTOCOMMIT}"
        )


def isolation_levels(key: str, options: dict[str, t.Any]) -> list[tuple[str, t.Any]]:
    """Where an engine entry sets an isolation level, and to what."""
    found = []
    if options.get("isolation_level") is not None:
        found.append((f"{key}['isolation_level']", options["isolation_level"]))
    level = options.get("execution_options", {}).get("isolation_level")
    if level is not None:
        found.append((f"{key}['execution_options']['isolation_level']", level))
    return found


def normal_level(level: str) -> str:
    """An isolation level name as SQLAlchemy compares it."""
    return level.replace("_", " ").upper()


def check_dialect_levels(
    key: str, engine: sa.Engine, options: dict[str, t.Any]
) -> None:
    """Refuse an isolation level the engine's dialect does not know, now
    rather than at the first connection of every request.
    """
    levels = isolation_levels(key, options)
    if not levels:
        return
    try:
        # The built-in dialects return a fixed list and ignore the connection.
        known = list(engine.dialect.get_isolation_level_values(None))  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - a dialect that needs a connection
        return
    for where, level in levels:
        if normal_level(level) not in known:
            usable = [k for k in known if k != "AUTOCOMMIT"]
            raise ValueError(
                f"{where} is {level!r}, which is not an isolation level of"
                f" {engine.dialect.name!r}. Use one of"
                f" {', '.join(repr(k) for k in usable)}, or remove it for the"
                " database's default."
            )
