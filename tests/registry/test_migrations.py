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


def _edge_rows(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(
        "SELECT id, parent, child, relation, origin, content_hash, note FROM lineage_edges ORDER BY id"))]


def test_upgrade_moves_text_keyed_edges_to_node_ids_and_back(db_url, cli):
    """0004: edges keyed by text become (parent_id, child_id) pairs over lineage_nodes, every edge
    kept with its id, relation, origin, hash and note; the downgrade writes the keys back."""
    from sqlalchemy import select

    from registry.database import session_scope
    from registry.db import LineageEdgeRow, LineageNodeRow
    from registry.lineage import lineage_tree
    from registry.recipes import load_recipes
    from registry.sync import sync

    engine = database.get_engine(db_url)
    with session_scope(db_url) as s:
        sync(s, load_recipes())  # the recipes' own edges, written before the change as now
    _downgrade_to(engine, "0003_step_series")
    note = '{"relpath": "run-a/checkpoint", "base": "runs", "path": "/r/run-a/checkpoint"}'
    old_style = [  # shared parents, a node used as parent and child, two relations on one pair, a cycle
        ("stage:tulu3-8b:sft", "run:run-a", "executes", "run", None, None),
        ("dataset:allenai/tulu-3-sft-mixture@md5:aaaa", "run:run-a", "train", "run", "md5-a", None),
        ("run:run-a", "checkpoint:run:run-a", "output", "run", "h-a.dir", note),
        ("run:run-a", "run:run-b", "init", "run", "h-a.dir", note),
        ("run:run-a", "run:run-b", "reference", "run", "h-a.dir", note),
        ("stage:tulu3-8b:dpo", "run:run-b", "executes", "run", None, None),
        ("run:cyc-1", "run:cyc-2", "init", "run", None, None),
        ("run:cyc-2", "run:cyc-1", "init", "run", None, None),  # an old database may hold one
    ]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO lineage_edges (parent, child, relation, origin, content_hash, note) "
                          "VALUES (:p, :c, :r, :o, :h, :n)"),
                     [dict(zip("pcrohn", row)) for row in old_style])
        before = _edge_rows(conn)
    assert [r[1:] for r in before[-len(old_style):]] == old_style
    database._engine_for.cache_clear()
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    database._engine_for.cache_clear()
    with session_scope(db_url) as s:
        after = [(e.id, e.parent, e.child, e.relation, e.origin, e.content_hash, e.note)
                 for e in s.scalars(select(LineageEdgeRow).order_by(LineageEdgeRow.id))]
        keys = list(s.scalars(select(LineageNodeRow.key).order_by(LineageNodeRow.id)))
        tree = lineage_tree(s, "run:run-b").to_json()
        cycle = lineage_tree(s, "run:cyc-1").to_json()
    assert after == before  # every edge, with its id
    distinct = list(dict.fromkeys(k for r in before for k in (r[1], r[2])))
    assert keys == distinct  # each key once, numbered in the order the edges first used it
    assert {c["node"] for c in tree["children"]} == {"run:run-a", "stage:tulu3-8b:dpo"}
    assert cycle == {"node": "run:cyc-1", "children": [{"node": "run:cyc-2", "relation": "init"}]}
    _downgrade_to(database.get_engine(db_url), "0003_step_series")
    with database.get_engine(db_url).connect() as conn:
        assert _edge_rows(conn) == before
