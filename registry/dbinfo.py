"""What every database access needs, without importing SQLAlchemy: where the database is and the
schema revision this code expects (the cold read path in registry.light_db uses both)."""

from __future__ import annotations

import os
from pathlib import Path

# The Alembic head this code expects. A test asserts it equals the migrations' head,
# so the check at connect time needs no migration machinery (it keeps `repro list` fast).
SCHEMA_REVISION = "0005_run_seq"


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
