"""WSGI entry point: `gunicorn wsgi:app`."""

from deliberate import create_app

app = create_app()
