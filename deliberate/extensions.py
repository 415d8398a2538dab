"""Flask extensions, created unbound and bound to the app in create_app."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from .ratelimit import address_key  # also registers the database:// rate-limit storage

# Named constraints so that migrations are stable across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
# Limits are set per view (deliberate/ratelimit.py); counters live where RATELIMIT_STORAGE_URI
# says, by default the app's database. If that storage fails, the limits keep applying with
# per-process in-memory counters until it recovers (and nothing fails because of the limiter).
limiter = Limiter(
    key_func=address_key,
    default_limits=[],
    in_memory_fallback_enabled=True,
    swallow_errors=True,
)
