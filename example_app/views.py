"""The ledger's JSON API and HTML page."""

from __future__ import annotations

import functools
import os
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import abort
from flask import Blueprint
from flask import current_app
from flask import render_template
from flask import request
from werkzeug.exceptions import HTTPException

from flask_uow import is_transient_error

from . import notify
from . import uow
from .audit import audit_log
from .models import Account
from .models import entries

bp = Blueprint("ledger", __name__)
#: How often a transfer is tried again after a conflict. SERIALIZABLE
#: transfers on a few busy accounts conflict often on PostgreSQL.
TRANSFER_RETRIES = int(os.environ.get("LEDGER_TRANSFER_RETRIES", "10"))


class Overdraft(Exception):
    """A transfer larger than the source account's balance."""


@bp.app_errorhandler(Overdraft)
def overdraft(e: Overdraft) -> tuple[dict[str, str], int]:
    return {"error": str(e)}, 409


@bp.app_errorhandler(sa_exc.IntegrityError)
def conflict(e: sa_exc.IntegrityError) -> tuple[dict[str, str], int]:
    return {"error": "That conflicts with existing data."}, 409


@bp.app_errorhandler(sa_exc.OperationalError)
def busy(e: sa_exc.OperationalError) -> tuple[dict[str, str], int, dict[str, str]]:
    """The database stayed busy ("database is locked", a serialization
    failure) through every retry: the client may try again shortly.
    """
    if not is_transient_error(e):
        raise e  # A real failure: logged, and a 500.
    body = {"error": "The database is busy. Try again in a moment."}
    return body, 503, {"Retry-After": "1"}


#: The views that answer with HTML; every other error is answered as JSON.
HTML_VIEWS = {"ledger.index", "ledger.account_page"}


@bp.app_errorhandler(HTTPException)
def http_error(e: HTTPException) -> HTTPException | tuple[dict[str, t.Any], int]:
    """Answer the JSON API's errors (400, 404, 405, 500...) as JSON."""
    if request.endpoint in HTML_VIEWS:
        return e
    return {"error": e.description}, e.code or 500


@bp.get("/")
def index() -> str:
    """The accounts, 20 to a page (``?page=2``)."""
    page = uow.paginate(sa.select(Account).order_by(Account.name))
    return render_template("index.html", page=page)


@bp.get("/accounts")
def list_accounts() -> dict[str, t.Any]:
    accounts = uow.session.scalars(sa.select(Account).order_by(Account.id))
    return {"accounts": [a.to_json() for a in accounts]}


@bp.get("/notifications")
def list_notifications() -> dict[str, list[str]]:
    return {"notifications": notify.outbox()}


@bp.get("/audit")
def list_audit() -> dict[str, t.Any]:
    rows = uow.session.execute(sa.select(audit_log).order_by(audit_log.c.id))
    return {"entries": [{**row._asdict(), "at": row.at.isoformat()} for row in rows]}


def _json() -> dict[str, t.Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "Send a JSON object.")
    return data


@bp.post("/accounts")
def open_account() -> tuple[dict[str, t.Any], int]:
    data = _json()
    name = data.get("name")
    balance = _int_field(data, "balance") if "balance" in data else 0
    if not isinstance(name, str) or not name or balance < 0:
        abort(400, "Give a 'name' and a non-negative 'balance' in cents.")
    account = Account(name=name, balance=balance)
    uow.session.add(account)
    uow.session.flush()  # Assigns the id; the commit happens at request end.
    return account.to_json(), 201


def _int_field(data: dict[str, t.Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        abort(400, f"Give {key!r} as an integer.")
    return value


@bp.get("/accounts/<int:account_id>")
def account_page(account_id: int) -> str:
    account = uow.get_or_404(Account, account_id, description="No such account.")
    rows = uow.session.execute(
        sa.select(entries)
        .where(entries.c.account_id == account_id)
        .order_by(entries.c.id.desc())
    )
    return render_template("account.html", account=account, entries=rows)


@bp.post("/transfers")
@uow.transactional(retries=TRANSFER_RETRIES, isolation_level="SERIALIZABLE")
def transfer() -> tuple[dict[str, t.Any], int]:
    """Move money between two accounts. Concurrent transfers that conflict
    are retried; the notification goes out only once the transfer is saved.
    """
    data = _json()
    source_id, target_id = _int_field(data, "from"), _int_field(data, "to")
    amount = _int_field(data, "amount")
    if amount <= 0 or source_id == target_id:
        abort(400, "The amount must be positive and the accounts different.")
    locked = uow.session.scalars(
        sa.select(Account)
        .where(Account.id.in_([source_id, target_id]))
        .order_by(Account.id)
        .with_for_update()
    ).all()
    accounts = {a.id: a for a in locked}
    if len(accounts) != 2:
        abort(404, "Both accounts must exist.")
    source, target = accounts[source_id], accounts[target_id]
    if source.balance < amount:
        raise Overdraft(f"Account {source.name!r} cannot cover {amount} cents.")
    source.balance -= amount
    target.balance += amount
    uow.session.execute(
        sa.insert(entries),
        [
            {"account_id": source.id, "amount": -amount},
            {"account_id": target.id, "amount": amount},
        ],
    )
    message = f"{source.name} sent {amount} cents to {target.name}."
    if current_app.config.get("UOW_OUTBOX"):
        from .tasks import send_notification

        # Written in this transaction: sent if and only if the transfer commits.
        uow.enqueue(send_notification, message)
    else:
        uow.on_commit(functools.partial(notify.send, message))
    return {"from": source.to_json(), "to": target.to_json()}, 201
