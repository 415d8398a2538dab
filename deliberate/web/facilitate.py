"""Blueprint: facilitate."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("facilitate", __name__)
