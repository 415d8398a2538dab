"""Blueprint: tokens. The account's personal API tokens: create, list, revoke.

A new token's secret is shown once, on the page that answers the form (as the password-reset
link page does); only its hash is stored, so it cannot be shown again. Revoking is a plain
form with Post/Redirect/Get.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from ..services import api_tokens
from ..services.errors import Conflict, DomainError
from .decorators import actor, login_required

try:  # WTForms 3.3+ deprecates (value, label) tuples in favour of SelectChoice
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None

bp = Blueprint("tokens", __name__)

EXPIRY_CHOICES = (("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("never", "Never"))


def _choice(value: str, label: str):
    return SelectChoice(value, label) if SelectChoice is not None else (value, label)


class CreateTokenForm(FlaskForm):
    name = StringField(
        "Token name",
        validators=[
            DataRequired("Give the token a name, such as the tool that will use it."),
            Length(max=api_tokens.NAME_MAX),
        ],
    )
    expires = SelectField(
        "Expires after", choices=[_choice(v, label) for v, label in EXPIRY_CHOICES], default="90"
    )
    submit = SubmitField("Create token")


class RevokeForm(FlaskForm):
    """Nothing but the CSRF token."""


def _page(form: CreateTokenForm, status: int = 200, new_token=None):
    tokens = api_tokens.list_tokens(actor())
    return (
        render_template(
            "account/api_tokens.html",
            form=form,
            revoke_form=RevokeForm(),
            tokens=tokens,
            status_of=api_tokens.token_status,
            new_token=new_token,
        ),
        status,
    )


@bp.get("/account/api-tokens")
@login_required
def index():
    """List the user's API tokens, with the form to create one."""
    return _page(CreateTokenForm(formdata=None))


@bp.post("/account/api-tokens")
@login_required
def create():
    """Create a token and show its secret, this once."""
    form = CreateTokenForm()
    if not form.validate():
        return _page(form, 400)
    days = None if form.expires.data == "never" else int(form.expires.data)
    try:
        issued = api_tokens.create_token(actor(), form.name.data, days)
    except DomainError as error:
        form.name.errors = [*form.name.errors, error.message]
        return _page(form, error.status_code)
    return _page(CreateTokenForm(formdata=None), 200, new_token=issued)


@bp.post("/account/api-tokens/<int:token_id>/revoke")
@login_required
def revoke(token_id: int):
    """Revoke one of the user's tokens, then go back to the list."""
    form = RevokeForm()
    if not form.validate():
        flash("The form expired; please try again.", "error")
        return redirect(url_for("tokens.index"), code=303)
    try:
        token = api_tokens.revoke_token(actor(), token_id)
    except Conflict as error:
        flash(error.message, "info")
        return redirect(url_for("tokens.index"), code=303)
    flash(f"The token “{token.name}” is revoked: it no longer works.", "success")
    return redirect(url_for("tokens.index"), code=303)
