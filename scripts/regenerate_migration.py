"""Regenerate migrations/versions/0001_initial.py from the models.

Only for the time before the first release: afterwards, add new migrations with
`deliberate db migrate -m "..."` and review them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERSIONS = ROOT / "migrations" / "versions"


def main() -> None:
    for old in VERSIONS.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DELIBERATE_DATABASE_URL"] = f"sqlite:///{tmp}/empty.db"
        from flask_migrate import migrate

        from deliberate import create_app

        app = create_app(
            {"DELIBERATE_ENV": "testing", "SECRET_KEY": "x", "INSTANCE_PATH": tmp,
             "ANALYSIS_WORKER": "off"}
        )
        with app.app_context():
            migrate(message="initial", rev_id="0001")
    generated = next(VERSIONS.glob("0001_*.py"))
    target = VERSIONS / "0001_initial.py"
    generated.rename(target)
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
