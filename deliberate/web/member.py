"""Blueprint: member."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("member", __name__)
