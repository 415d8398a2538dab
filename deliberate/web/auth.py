"""Blueprint: auth. Logging in and out, invitations, password resets, the account page."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.routing import BuildError
from wtforms import EmailField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from ..ratelimit import invitation_limits, login_limits
from ..services import accounts, invitations
from ..services.errors import DomainError, InvalidToken
from ..services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from .decorators import actor, reads_first

bp = Blueprint("auth", __name__)

PASSWORD_HINT = f"At least {MIN_PASSWORD_LENGTH} characters. A few unrelated words work well."


@bp.context_processor
def _template_values() -> dict:
    return {"password_hint": PASSWORD_HINT}


class LoginForm(FlaskForm):
    email = EmailField(
        "Email", validators=[DataRequired("Enter your email address."), Length(max=254)]
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired("Enter your password."), Length(max=MAX_PASSWORD_LENGTH)],
    )
    submit = SubmitField("Log in")


class _NewPasswordForm(FlaskForm):
    password = PasswordField(
        "New password",
        validators=[
            DataRequired("Choose a password."),
            Length(min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH),
        ],
    )
    confirm = PasswordField(
        "New password again",
        validators=[
            DataRequired("Type the password again."),
            EqualTo("password", "The two passwords are not the same."),
        ],
    )


class AcceptInvitationForm(_NewPasswordForm):
    name = StringField("Your name", validators=[DataRequired("Enter your name."), Length(max=200)])
    submit = SubmitField("Set password and continue")


class ResetPasswordForm(_NewPasswordForm):
    submit = SubmitField("Set new password")


class ChangePasswordForm(_NewPasswordForm):
    current = PasswordField(
        "Current password",
        validators=[DataRequired("Enter your current password."), Length(max=MAX_PASSWORD_LENGTH)],
    )
    submit = SubmitField("Change password")


class LogoutEverywhereForm(FlaskForm):
    submit = SubmitField("Log out everywhere")


def safe_next(target: str | None) -> str | None:
    """Return the target if it is a relative path on this site, else None."""
    if not target or not isinstance(target, str) or len(target) > 2000:
        return None
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _round_url(round_id: int | None) -> str:
    """Where an invitation leads: its round, if the member pages know it, else the rounds."""
    if round_id is not None:
        for endpoint in ("member.round_page", "member.round"):
            try:
                return url_for(endpoint, round_id=round_id)
            except BuildError:
                continue
    return url_for("index")


def _apply_errors(form: FlaskForm, error: DomainError, field: str) -> None:
    getattr(form, field).errors = [*getattr(form, field).errors, error.message]


@bp.route("/login", methods=["GET", "POST"])
@login_limits()
def login():
    """Log in with email and password."""
    target = safe_next(request.values.get("next"))
    if current_user.is_authenticated and request.method == "GET":
        return redirect(target or url_for("index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(form.email.data, form.password.data)
        except DomainError as error:
            form.password.errors = [error.message]
            status = 400
        else:
            login_user(user)
            flash(f"Welcome, {user.name}.", "success")
            return redirect(target or url_for("index"), code=303)
    elif request.method == "POST":
        status = 400
    return render_template("auth/login.html", form=form, next=target), status


@bp.post("/logout")
def logout():
    """Log out of this browser."""
    if current_user.is_authenticated:
        logout_user()
        flash("You are logged out.", "info")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/invite/<token>", methods=["GET", "POST"])
@invitation_limits("invite")
@reads_first
def accept_invitation(token: str):
    """Accept an invitation: choose a password, then go to the round."""
    invitation = invitations.find_invitation(token, invitations.INVITE)
    user, round_id = invitation.user, invitation.round_id
    form = AcceptInvitationForm()
    if request.method == "GET":
        form.name.data = user.name
    status = 200
    if form.validate_on_submit():
        try:
            user = invitations.accept_invitation(token, form.password.data, form.name.data)
        except InvalidToken:
            raise
        except DomainError as error:
            _apply_errors(form, error, "password")
            status = 400
        else:
            switched = _other_account(user)
            logout_user()  # whoever was logged in here (the page said so)
            login_user(user)
            if switched is not None:
                flash(f"You are now logged in as {user.email}, not {switched}.", "info")
            flash("Your password is set. Welcome to deliberate.", "success")
            return redirect(_round_url(round_id), code=303)
    elif request.method == "POST":
        status = 400
    return (
        render_template("auth/invite.html", form=form, user=user, other=_other_account(user)),
        status,
    )


def _other_account(user) -> str | None:
    """The email of the account logged in on this browser when it is not `user`'s (a link
    opened in a browser someone else is logged in on): the page says it will switch."""
    if current_user.is_authenticated and current_user.id != user.id:
        return current_user.email
    return None


@bp.route("/reset/<token>", methods=["GET", "POST"])
@invitation_limits("reset")
@reads_first
def reset_password(token: str):
    """Choose a new password through a reset link."""
    invitation = invitations.find_invitation(token, invitations.RESET)
    user = invitation.user
    form = ResetPasswordForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = invitations.reset_password(token, form.password.data)
        except InvalidToken:
            raise
        except DomainError as error:
            _apply_errors(form, error, "password")
            status = 400
        else:
            switched = _other_account(user)
            logout_user()
            login_user(user)
            if switched is not None:
                flash(f"You are now logged in as {user.email}, not {switched}.", "info")
            flash("Your new password is set.", "success")
            return redirect(url_for("index"), code=303)
    elif request.method == "POST":
        status = 400
    return (
        render_template("auth/reset.html", form=form, user=user, other=_other_account(user)),
        status,
    )


@bp.route("/account", methods=["GET", "POST"])
@reads_first  # above login_required: loading the user is a read too
@login_required
def account():
    """Show the account page and change the password."""
    form = ChangePasswordForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = accounts.change_password(actor(), form.current.data, form.password.data)
        except DomainError as error:
            field = "current" if isinstance(error, accounts.WrongPassword) else "password"
            _apply_errors(form, error, field)
            status = 400
        else:
            # The session id carries auth_version: log this browser in again under the new one.
            login_user(user)
            flash("Your password is changed. You were logged out on every other device.", "success")
            return redirect(url_for("auth.account"), code=303)
    elif request.method == "POST":
        status = 400
    return render_template(
        "auth/account.html", form=form, logout_form=LogoutEverywhereForm(), user=current_user
    ), status


@bp.post("/account/logout-everywhere")
@login_required
def logout_everywhere():
    """End every session of this account, this one included."""
    form = LogoutEverywhereForm()
    if not form.validate_on_submit():
        flash("The form expired; please try again.", "error")
        return redirect(url_for("auth.account"), code=303)
    accounts.logout_everywhere(actor())
    logout_user()
    flash("You are logged out on every device.", "info")
    return redirect(url_for("auth.login"), code=303)
