"""The schema is built by the migrations, matches the models, and the version gate refuses old/new schemas."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from registry import database
from registry.db import SCHEMA_REVISION, Base
from registry.errors import ReproError


def test_code_revision_is_the_migrations_head():
    script = ScriptDirectory(str(database.MIGRATIONS_DIR))
    assert script.get_heads() == [SCHEMA_REVISION]
    assert database.KNOWN_REVISIONS[-1] == SCHEMA_REVISION
    chain = [rev.revision for rev in script.walk_revisions()][::-1]
    assert tuple(chain) == database.KNOWN_REVISIONS


def test_migrations_build_exactly_the_models(db_url):
    engine = database.get_engine(db_url)  # a new database is created through the migrations
    assert database.current_revision(engine) == SCHEMA_REVISION
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def _downgrade_to(engine, revision):
    from alembic import command

    database.run_migrations(engine, command.downgrade, revision)


def test_older_schema_is_refused_until_upgrade(db_url, cli):
    engine = database.get_engine(db_url)
    _downgrade_to(engine, "0001_initial")
    database._engine_for.cache_clear()
    with pytest.raises(ReproError, match=r"older than .*run `repro db upgrade`"):
        database.get_engine(db_url)
    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert f"0001_initial -> {SCHEMA_REVISION}" in out
    database._engine_for.cache_clear()
    assert database.current_revision(database.get_engine(db_url)) == SCHEMA_REVISION


def test_newer_schema_is_refused(db_url, cli):
    engine = database.get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    database._engine_for.cache_clear()
    code, out, err = cli("runs", "--json")
    assert code == 2
    assert "newer than this repro" in err and err.count("\n") == 1
    code, out, err = cli("db", "upgrade")
    assert code == 2 and "newer than this repro" in err


def test_unreachable_database_names_no_password(cli, monkeypatch):
    monkeypatch.setenv("REPRO_DATABASE_URL", "postgresql+psycopg://alice:s3cret-pw@127.0.0.1:1/nowhere")
    code, out, err = cli("runs")
    assert code == 2
    assert "cannot connect" in err and "s3cret-pw" not in err and "***" in err
    assert err.count("\n") == 1 and out == ""


def test_malformed_database_url(cli, monkeypatch):
    monkeypatch.setenv("REPRO_DATABASE_URL", "not a url at all")
    code, _, err = cli("runs")
    assert code == 2 and "invalid database URL" in err
