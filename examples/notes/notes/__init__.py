"""A small app written for Flask-SQLAlchemy 3.1, switched to flask_uow by
its import line only (see notes/models.py): db.Model, Model.query,
db.session.commit() in views, db.paginate, db.get_or_404 and Flask-Login.
"""

from flask import Flask
from flask import jsonify
from flask import request
from flask_login import current_user
from flask_login import login_required
from flask_login import login_user
from flask_login import LoginManager

from .models import db
from .models import Note
from .models import User

login_manager = LoginManager()


@login_manager.user_loader
def load_user(user_id):
    return db.session.get(User, int(user_id))


def create_app(test_config=None):
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY="dev", SQLALCHEMY_DATABASE_URI="sqlite:///notes.sqlite"
    )
    if test_config:
        app.config.update(test_config)
    db.init_app(app)
    login_manager.init_app(app)

    @app.post("/register")
    def register():
        user = User(username=request.form["username"])
        user.set_password(request.form["password"])
        db.session.add(user)
        db.session.commit()
        return {"id": user.id}, 201

    @app.post("/login")
    def login():
        user = User.query.filter_by(username=request.form["username"]).first_or_404()
        if not user.check_password(request.form["password"]):
            return {"error": "wrong password"}, 403
        login_user(user)
        return {"id": user.id}

    @app.post("/notes")
    @login_required
    def add_note():
        note = Note(body=request.form.get("body", ""), author=current_user)
        db.session.add(note)
        if not note.body.strip():
            # Flask-SQLAlchemy: the note is never committed. flask_uow: the
            # failed request is rolled back as well.
            return {"error": "empty note"}, 400
        current_user.note_count += 1
        db.session.commit()
        return {"id": note.id}, 201

    @app.get("/notes")
    @login_required
    def list_notes():
        select = db.select(Note).filter_by(author_id=current_user.id).order_by(Note.id)
        page = db.paginate(select, per_page=5)
        return jsonify(
            items=[n.body for n in page.items], total=page.total, pages=page.pages
        )

    @app.get("/notes/<int:note_id>")
    def show_note(note_id):
        return {"body": db.get_or_404(Note, note_id).body}

    return app
