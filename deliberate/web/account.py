"""Blueprint: account data. Downloading one's personal data and erasing an account.

A member downloads everything stored about them as JSON and may erase their own account
(confirmed with their password); an admin may erase someone else's account. The services check
authorisation again; see docs/data-protection.md.
"""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, url_for
from flask_login import logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import AnyOf, InputRequired, Length

from ..extensions import limiter
from ..models import Role, utcnow
from ..ratelimit import account_key, export_limits
from ..services import accounts
from ..services import personal_data as personal_data_service
from ..services.errors import DomainError
from ..services.passwords import MAX_PASSWORD_LENGTH
from .decorators import actor, login_required, reads_first, roles_required

bp = Blueprint("account", __name__)

# Password guesses through the erase form: per account and per client address.
ERASE_LIMIT = "10 per minute; 50 per hour"
CONFIRM_MESSAGE = "Tick the box to confirm that you understand the erasure cannot be undone."


class _ConfirmForm(FlaskForm):
    # A checkbox whose only accepted value is "yes": anything else is not a confirmation.
    confirm = StringField(
        "I understand that this cannot be undone",
        validators=[InputRequired(CONFIRM_MESSAGE), AnyOf(["yes"], CONFIRM_MESSAGE)],
    )


class EraseOwnAccountForm(_ConfirmForm):
    password = PasswordField(
        "Your password",
        validators=[
            InputRequired("Enter your password to confirm."),
            Length(max=MAX_PASSWORD_LENGTH, message="That is not your password."),
        ],
    )


class EraseAccountForm(_ConfirmForm):
    """An admin's confirmation of someone else's erasure."""


def _first_error(form: FlaskForm) -> str:
    for errors in form.errors.values():
        if errors:
            return str(errors[0])
    return "The form could not be read."


# --- download ------------------------------------------------------------------------------


@bp.get("/account/data")
@login_required
def data():
    """Explain what the download holds, with the download link."""
    return render_template("account/data.html")


@bp.get("/account/data/download")
@export_limits()
@login_required
def download():
    """Send everything stored about the logged-in person as a JSON file (never cached)."""
    user = actor()
    body = personal_data_service.personal_data_json(
        personal_data_service.personal_data(user, user.id)
    )
    filename = f"deliberate-personal-data-{utcnow():%Y-%m-%d}.json"
    response = Response(body, mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


# --- erasing one's own account -------------------------------------------------------------


@bp.route("/account/erase", methods=["GET", "POST"])
@limiter.limit(ERASE_LIMIT, methods=["POST"], key_func=account_key)
@limiter.limit(ERASE_LIMIT, methods=["POST"])
@reads_first  # the service checks the password with nothing held, then takes the write lock
@login_required
def erase():
    """Show and handle the form erasing one's own account."""
    form = EraseOwnAccountForm()
    user = actor()
    if form.is_submitted():
        if not form.validate():
            flash(_first_error(form), "error")
            return render_template("account/erase.html", form=form), 400
        try:
            personal_data_service.erase_account(user, user.id, password=form.password.data)
        except DomainError as error:
            flash(error.message, "error")
            return render_template("account/erase.html", form=form), error.status_code
        logout_user()
        flash(
            "Your account is erased: your name and email address are gone, and your votes "
            "count on anonymously. Thank you for taking part.",
            "success",
        )
        return redirect(url_for("auth.login"), 303)
    return render_template("account/erase.html", form=form)


# --- an admin erasing someone's account ----------------------------------------------------


@bp.route("/facilitate/people/<int:user_id>/erase", methods=["GET", "POST"])
@roles_required(Role.ADMIN.value)
def erase_person(user_id: int):
    """Show and handle an admin's form erasing someone else's account."""
    person = accounts.get_person(actor(), user_id)
    if person.id == actor().id:
        return redirect(url_for(".erase"), 303)
    form = EraseAccountForm()
    context = {"form": form, "person": person}
    if form.is_submitted():
        if not form.validate():
            flash(_first_error(form), "error")
            return render_template("account/erase_person.html", **context), 400
        try:
            personal_data_service.erase_account(actor(), user_id)
        except DomainError as error:
            flash(error.message, "error")
            return render_template("account/erase_person.html", **context), error.status_code
        flash(f"Account {user_id} is erased: it no longer names anyone.", "success")
        return redirect(url_for("people.index"), 303)
    return render_template("account/erase_person.html", **context)
