"""What every database access needs, without importing SQLAlchemy: where the database is and the
schema revision this code expects (the cold read path in registry.light_db uses both)."""

from __future__ import annotations

import os
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _revisions() -> tuple[str, ...]:
    """The Alembic revisions, oldest first. Each migration file is named after its revision id
    (`NNNN_name.py`, and `revision = "NNNN_name"` inside), so the chain is read from the folder and
    written nowhere else; a test checks that Alembic's own chain is this one."""
    return tuple(sorted(name[:-3] for name in os.listdir(MIGRATIONS_DIR / "versions")
                        if name[:4].isdigit() and name.endswith(".py")))


KNOWN_REVISIONS = _revisions()
# The Alembic head this code expects: the check at connect time needs no migration machinery
# (it keeps `repro list` fast).
SCHEMA_REVISION = KNOWN_REVISIONS[-1]


def default_url() -> str:
    home = os.environ.get("REPRO_HOME")
    if not home:
        from platformdirs import user_data_dir  # only when needed: it imports tempfile and random

        home = user_data_dir("repro", appauthor=False)
    data = Path(home)
    data.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data / 'repro.db'}"


def database_url() -> str:
    return os.environ.get("REPRO_DATABASE_URL") or default_url()
