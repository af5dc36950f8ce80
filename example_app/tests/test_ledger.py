"""The ledger, as its users see it."""

from __future__ import annotations

import pathlib
import sqlite3
import typing as t

from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app import uow
from flask_uow import Isolation

Accounts = dict[str, int]


def balances(client: FlaskClient) -> dict[str, int]:
    accounts = client.get("/accounts").json["accounts"]  # type: ignore[index]
    return {a["name"]: a["balance"] for a in accounts}


def transfer(
    client: FlaskClient, accounts: Accounts, amount: int, **kw: t.Any
) -> t.Any:
    body = {"from": accounts["alice"], "to": accounts["bob"], "amount": amount}
    return client.post("/transfers", json=body, **kw)


def test_transfer_moves_money(client: FlaskClient, accounts: Accounts) -> None:
    """A transfer updates both balances."""
    response = transfer(client, accounts, 300)
    assert response.status_code == 201
    assert balances(client) == {"alice": 700, "bob": 300}


def test_each_test_starts_from_the_same_accounts(
    client: FlaskClient, accounts: Accounts
) -> None:
    """The previous test's transfer was rolled back with its isolation."""
    assert balances(client) == {"alice": 1000, "bob": 0}


def test_overdraft_is_409_and_writes_nothing(
    client: FlaskClient, accounts: Accounts, uow_isolation: Isolation
) -> None:
    """An overdraft is refused with 409 and nothing is committed."""
    commits = len(uow_isolation.commits)
    response = transfer(client, accounts, 5000)
    assert response.status_code == 409
    assert "cannot cover" in response.json["error"]
    assert balances(client) == {"alice": 1000, "bob": 0}
    assert len(uow_isolation.commits) == commits


def test_duplicate_account_is_409(client: FlaskClient, accounts: Accounts) -> None:
    """Opening an account with a taken name fails at commit: 409."""
    assert client.post("/accounts", json={"name": "alice"}).status_code == 409
    assert sorted(balances(client)) == ["alice", "bob"]


def test_audit_log_records_who_changed_what(
    client: FlaskClient, accounts: Accounts
) -> None:
    """A transfer is audited in the same transaction: one row per change, with
    the actor from the X-User header and old and new values.
    """
    response = transfer(client, accounts, 300, headers={"X-User": "carol"})
    assert response.status_code == 201
    entries = client.get("/audit").json["entries"]  # type: ignore[index]
    carol = [e for e in entries if e["actor"] == "carol"]
    audited = sorted((e["operation"], e["table_name"], e["changes"]) for e in carol)
    alice, bob = accounts["alice"], accounts["bob"]
    assert audited == [
        (
            "insert",
            "entries",
            f'{{"account_id": [null, {alice}], "amount": [null, -300]}}',
        ),
        (
            "insert",
            "entries",
            f'{{"account_id": [null, {bob}], "amount": [null, 300]}}',
        ),
        ("update", "accounts", '{"balance": [0, 300]}'),
        ("update", "accounts", '{"balance": [1000, 700]}'),
    ]
    opened = [e for e in entries if e["actor"] == "anonymous"]
    assert [(e["operation"], e["table_name"]) for e in opened] == [
        ("insert", "accounts"),
        ("insert", "accounts"),
    ]


def test_overdraft_is_not_audited(client: FlaskClient, accounts: Accounts) -> None:
    """A rolled back transfer leaves no audit row."""
    before = len(client.get("/audit").json["entries"])  # type: ignore[index]
    transfer(client, accounts, 5000)
    assert len(client.get("/audit").json["entries"]) == before  # type: ignore[index]


def test_pages_and_bad_input(client: FlaskClient, accounts: Accounts) -> None:
    """The HTML page lists accounts a page at a time; bad input gets a 400,
    unknown accounts and pages 404.
    """
    assert b"alice" in client.get("/").data
    assert b"bob" not in client.get("/?per_page=1").data
    assert b"bob" in client.get("/?page=2&per_page=1").data
    assert client.get("/?page=2").status_code == 404
    assert client.post("/transfers", data="nope").status_code == 400
    assert client.post("/transfers", json={"from": "1"}).status_code == 400
    assert client.post("/accounts", json={"name": ""}).status_code == 400
    missing = client.post(
        "/transfers", json={"from": accounts["alice"], "to": -1, "amount": 1}
    )
    assert missing.status_code == 404


def test_notification_only_for_committed_transfers(
    app: Flask, client: FlaskClient, accounts: Accounts
) -> None:
    """A transfer notifies once it is committed; an overdraft never does."""
    transfer(client, accounts, 300)
    transfer(client, accounts, 5000)
    assert client.get("/notifications").json == {
        "notifications": ["alice sent 300 cents to bob."]
    }


def test_account_page_lists_entries(client: FlaskClient, accounts: Accounts) -> None:
    """The account page shows the balance and the transfer entries."""
    transfer(client, accounts, 250)
    page = client.get(f"/accounts/{accounts['bob']}").get_data(as_text=True)
    assert "Balance: 250 cents" in page and "<td>250</td>" in page
    unknown = client.get("/accounts/0")
    assert unknown.status_code == 404
    assert b"No such account." in unknown.data


def test_seed_command_opens_demo_accounts_once(
    app: Flask, client: FlaskClient, accounts: Accounts
) -> None:
    """'flask seed' opens the missing demo accounts in one transaction."""
    runner = app.test_cli_runner()
    assert runner.invoke(args=["seed", "--balance", "500"]).output == (
        "Opened 1 account(s).\n"
    )
    assert runner.invoke(args=["seed"]).output == "Opened 0 account(s).\n"
    assert balances(client)["carol"] == 500


def test_api_errors_are_json(client: FlaskClient, accounts: Accounts) -> None:
    """Every error of the JSON API is a JSON object with an 'error'; the HTML
    pages keep HTML error pages.
    """
    responses = [
        client.post("/transfers", data="nope"),
        client.post(
            "/transfers", json={"from": accounts["alice"], "to": -1, "amount": 1}
        ),
        client.get("/transfers"),
        client.get("/no/such/thing"),
    ]
    assert [(r.status_code, r.is_json) for r in responses] == [
        (400, True),
        (404, True),
        (405, True),
        (404, True),
    ]
    assert responses[0].json == {"error": "Send a JSON object."}
    page = client.get("/accounts/0")
    assert (page.status_code, page.mimetype) == (404, "text/html")


def test_busy_database_is_503_with_retry_after(tmp_path: pathlib.Path) -> None:
    """When SQLite stays locked through every retry, a transfer answers 503
    with Retry-After, as JSON, and moves no money.
    """
    path = tmp_path / "busy.db"
    busy_app = create_app(
        {
            "UOW_ENGINES": {
                "default": {
                    "url": f"sqlite:///{path}",
                    "sqlite_pragmas": {"busy_timeout": 0},
                }
            },
            "UOW_RETRY_DELAY": 0,
        }
    )
    client = busy_app.test_client()
    ids = [
        client.post("/accounts", json={"name": name, "balance": 100}).json["id"]  # type: ignore[index]
        for name in ("dora", "emil")
    ]
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        body = {"from": ids[0], "to": ids[1], "amount": 10}
        response = client.post("/transfers", json=body)
    finally:
        lock.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json == {"error": "The database is busy. Try again in a moment."}
    assert balances(client) == {"dora": 100, "emil": 100}
    assert client.get("/notifications").json == {"notifications": []}
    uow.dispose_engines(busy_app)


def test_account_page_runs_two_statements(
    client: FlaskClient,
    accounts: Accounts,
    uow_assert_num_queries: t.Callable[[int], t.ContextManager[t.Any]],
) -> None:
    """The account page reads the account and its entries, nothing more."""
    transfer(client, accounts, 100)
    with uow_assert_num_queries(2):
        assert client.get(f"/accounts/{accounts['bob']}").status_code == 200
