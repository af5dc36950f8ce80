from __future__ import annotations

import sqlalchemy as sa
from flask import abort
from flask import Blueprint
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for

from . import uow
from .auth import login_required
from .models import Post

bp = Blueprint("blog", __name__)


@bp.route("/")
def index():
    select = sa.select(Post).order_by(Post.created.desc())
    page = uow.paginate(select, per_page=10)
    return render_template("blog/index.html", page=page)


def get_post(id, check_author=True):
    post = uow.get_or_404(Post, id, description=f"Post id {id} doesn't exist.")
    if check_author and post.author != g.user:
        abort(403)
    return post


@bp.route("/create", methods=("GET", "POST"))
@login_required
def create():
    if request.method == "POST":
        title = request.form["title"]
        body = request.form["body"]
        if not title:
            flash("Title is required.")
        else:
            uow.session.add(Post(title=title, body=body, author=g.user))
            return redirect(url_for("blog.index"))
    return render_template("blog/create.html")


@bp.route("/<int:id>/update", methods=("GET", "POST"))
@login_required
def update(id):
    post = get_post(id)
    if request.method == "POST":
        title = request.form["title"]
        body = request.form["body"]
        if not title:
            flash("Title is required.")
        else:
            post.title = title
            post.body = body
            return redirect(url_for("blog.index"))
    return render_template("blog/update.html", post=post)


@bp.route("/<int:id>/delete", methods=("POST",))
@login_required
def delete(id):
    post = get_post(id)
    uow.session.delete(post)
    return redirect(url_for("blog.index"))
