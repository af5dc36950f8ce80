import pytest

from notes.models import db
from notes.models import Note
from notes.models import User


def test_register_is_committed(app, client):
    with app.app_context():
        before = User.query.count()
        response = client.post("/register", data={"username": "bob", "password": "b"})
        assert response.status_code == 201
        # The test body reads again through its own session.
        assert User.query.count() == before + 1
        db.session.remove()


def test_duplicate_username_fails(client):
    client.post("/register", data={"username": "bob", "password": "b"})
    with pytest.raises(Exception, match="UNIQUE|unique|duplicate"):
        client.post("/register", data={"username": "bob", "password": "c"})


def test_wrong_password(client):
    client.post("/register", data={"username": "bob", "password": "b"})
    assert (
        client.post("/login", data={"username": "bob", "password": "x"}).status_code
        == 403
    )
    assert (
        client.post("/login", data={"username": "nobody", "password": "x"}).status_code
        == 404
    )


def test_notes_need_login(client):
    assert client.post("/notes", data={"body": "hi"}).status_code == 401


def test_add_and_page_notes(app, alice):
    for i in range(7):
        assert alice.post("/notes", data={"body": f"note {i}"}).status_code == 201
    first = alice.get("/notes").get_json()
    assert first["items"] == [f"note {i}" for i in range(5)]
    assert (first["total"], first["pages"]) == (7, 2)
    second = alice.get("/notes?page=2").get_json()
    assert second["items"] == ["note 5", "note 6"]
    assert alice.get("/notes?page=3").status_code == 404
    with app.app_context():
        user = User.query.filter_by(username="alice").one()
        assert user.note_count == 7
        assert user.notes.count() == 7


def test_failed_request_leaves_nothing(app, alice):
    assert alice.post("/notes", data={"body": "  "}).status_code == 400
    with app.app_context():
        assert Note.query.count() == 0
        assert User.query.filter_by(username="alice").one().note_count == 0


def test_show_note(alice):
    note_id = alice.post("/notes", data={"body": "hello"}).get_json()["id"]
    assert alice.get(f"/notes/{note_id}").get_json() == {"body": "hello"}
    assert alice.get(f"/notes/{note_id + 1}").status_code == 404
