"""Blueprint: people (invitations, accounts, roles) for facilitators and admins."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("people", __name__)
