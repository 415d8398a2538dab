"""Blueprint: people (invitations, accounts, roles) for facilitators and admins."""

from __future__ import annotations

import base64

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import HiddenField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import AnyOf, DataRequired, Length, Optional

from ..models import ROLE_VALUES, Role, is_valid_id
from ..services import accounts, invitations
from ..services.errors import Conflict, DomainError, ValidationError
from .decorators import actor, roles_required

try:  # WTForms 3.3+ deprecates (value, label) tuples in favour of SelectChoice
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None

bp = Blueprint("people", __name__)


def _choice(value, label: str):
    return SelectChoice(value, label) if SelectChoice is not None else (value, label)


PEOPLE_PAGE_SIZE = accounts.PEOPLE_PAGE_SIZE
MAX_CSV_TEXT = 1_500_000  # characters; the request body limit applies as well


class InviteForm(FlaskForm):
    csv_text = TextAreaField("Paste the CSV", validators=[Optional(), Length(max=MAX_CSV_TEXT)])
    csv_file = FileField("Or upload a CSV file")
    round_id = SelectField("Invite to round", coerce=int, default=0)
    submit = SubmitField("Create invitation links")


class OrganisationForm(FlaskForm):
    name = StringField(
        "Organisation name",
        validators=[DataRequired("Enter the organisation's name."), Length(max=200)],
    )
    submit = SubmitField("Add organisation")


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=[_choice(r, r.capitalize()) for r in ROLE_VALUES])


class ActiveForm(FlaskForm):
    active = HiddenField(validators=[AnyOf(["0", "1"], "Say whether to activate or deactivate.")])


class ConfirmForm(FlaskForm):
    """A form with nothing but its CSRF token."""


def _invite_form() -> InviteForm:
    form = InviteForm()
    form.round_id.choices = [_choice(0, "No particular round")] + [
        _choice(r.id, f"{r.question[:80]} ({r.state})")
        for r in invitations.invitable_rounds(actor())
    ]
    return form


def _read_csv(form: InviteForm) -> str:
    """Return the CSV text from the uploaded file, or else from the text box."""
    upload = form.csv_file.data
    if upload is not None and getattr(upload, "filename", ""):
        raw = upload.read(MAX_CSV_TEXT * 4 + 1)
        if len(raw) > MAX_CSV_TEXT * 4:
            raise ValidationError("The file is too large.")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError(
                "The file is not UTF-8 text. Save it from your spreadsheet as “CSV UTF-8”."
            ) from None
    text = form.csv_text.data or ""
    if not text.strip():
        raise ValidationError("Paste the CSV or choose a file.")
    return text


def _cursor(name: str, values=None) -> int | None:
    """Return a page cursor (a person's id) from the query string; anything else is None."""
    value = (request.args if values is None else values).get(name, type=int)
    return value if is_valid_id(value) else None


def _back_to_people():
    """Redirect to the page of people the form was sent from (its filter and cursor)."""
    place = {name: _cursor(name, request.form) for name in ("organisation", "after", "before")}
    return redirect(url_for("people.index", **place), code=303)


@bp.get("/")
@roles_required(Role.FACILITATOR.value)
def index():
    """List a page of people, and the organisations."""
    user = actor()
    organisation_id = request.args.get("organisation", type=int)
    after, before = _cursor("after"), _cursor("before")
    page = accounts.people_page(
        user, organisation_id, limit=PEOPLE_PAGE_SIZE, after_id=after, before_id=before
    )
    # Where the forms on the page send the browser back to after a change.
    place = {"after": after} if after is not None else {"before": before} if before else {}
    organisations = accounts.list_organisations(user)
    counts = accounts.count_members_by_organisation(user)
    selected = next((o for o in organisations if o.id == organisation_id), None)
    return render_template(
        "people/index.html",
        people=page.items,
        page=page,
        place=place,
        total=accounts.count_people(user, organisation_id),
        organisations=organisations,
        counts=counts,
        selected=selected,
        organisation_form=OrganisationForm(formdata=None),
        roles=ROLE_VALUES,
        is_admin=user.role == Role.ADMIN,
    )


@bp.route("/invite", methods=["GET", "POST"])
@roles_required(Role.FACILITATOR.value)
def invite():
    """Create invitation links from a CSV of name,email,organisation; show them once."""
    form = _invite_form()
    if form.validate_on_submit():
        try:
            rows = invitations.parse_invitation_csv(_read_csv(form))
            issued = invitations.invite_members(
                actor(), rows, round_id=form.round_id.data or None, base_url=request.url_root
            )
        except DomainError as error:
            form.csv_text.errors = [*form.csv_text.errors, error.message]
        else:
            csv_text = invitations.links_csv(issued)
            download = "data:text/csv;charset=utf-8;base64," + base64.b64encode(
                csv_text.encode("utf-8")
            ).decode("ascii")
            n_links = sum(1 for item in issued if item.link)
            return render_template(
                "people/invite_result.html", issued=issued, n_links=n_links, download=download
            )
    status = 400 if request.method == "POST" else 200
    return render_template("people/invite.html", form=form), status


@bp.post("/<int:user_id>/reset-link")
@roles_required(Role.FACILITATOR.value)
def reset_link(user_id: int):
    """Issue a password-reset link for a person and show it once."""
    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return _back_to_people()
    try:
        link = invitations.issue_password_reset(actor(), user_id, request.url_root)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return _back_to_people()
    person = accounts.get_person(actor(), user_id)
    return render_template("people/reset_link.html", link=link, person=person)


@bp.post("/<int:user_id>/role")
@roles_required(Role.ADMIN.value)
def set_role(user_id: int):
    """Change a person's role (admins)."""
    form = RoleForm()
    if not form.validate_on_submit():
        flash("Choose one of the roles.", "error")
        return _back_to_people()
    try:
        user = accounts.set_role(actor(), user_id, form.role.data)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return _back_to_people()
    flash(f"{user.name} is now {user.role}.", "success")
    return _back_to_people()


@bp.post("/<int:user_id>/active")
@roles_required(Role.ADMIN.value)
def set_active(user_id: int):
    """Activate or deactivate an account (admins)."""
    form = ActiveForm()
    if not form.validate_on_submit():
        flash("Say whether to activate or deactivate the account.", "error")
        return _back_to_people()
    try:
        user = accounts.set_active(actor(), user_id, form.active.data == "1")
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return _back_to_people()
    flash(f"{user.name}'s account is {'active' if user.active else 'deactivated'}.", "success")
    return _back_to_people()


@bp.post("/organisations")
@roles_required(Role.FACILITATOR.value)
def create_organisation():
    """Add a member organisation."""
    form = OrganisationForm()
    if not form.validate_on_submit():
        message = " ".join(form.name.errors) or "The form expired; please try again."
        flash(message, "error")
        return redirect(url_for("people.index"), code=303)
    try:
        organisation = accounts.create_organisation(actor(), form.name.data)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return redirect(url_for("people.index"), code=303)
    flash(f"Added the organisation “{organisation.name}”.", "success")
    return redirect(url_for("people.index"), code=303)
