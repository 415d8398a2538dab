"""Password hashing (scrypt, via werkzeug) and the password rules."""

from __future__ import annotations

from werkzeug.security import check_password_hash, generate_password_hash

from .errors import ValidationError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256


def check_password_rules(password: str, *, email: str | None = None) -> None:
    """Refuse passwords that are too short, too long or equal to the email address."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"Use a password of at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(f"Use a password of at most {MAX_PASSWORD_LENGTH} characters.")
    if email and password.strip().lower() == email.strip().lower():
        raise ValidationError("Your password must not be your email address.")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash or not isinstance(password, str):
        return False
    return check_password_hash(password_hash, password)
