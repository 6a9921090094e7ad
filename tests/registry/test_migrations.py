"""The schema is built by the migrations, matches the models, and the version gate refuses old/new schemas."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from registry import db
from registry.errors import ReproError
from registry.models import SCHEMA_REVISION, Base


def test_code_revision_is_the_migrations_head():
    script = ScriptDirectory(str(db.MIGRATIONS_DIR))
    assert script.get_heads() == [SCHEMA_REVISION]
    assert db.KNOWN_REVISIONS[-1] == SCHEMA_REVISION
    chain = [rev.revision for rev in script.walk_revisions()][::-1]
    assert tuple(chain) == db.KNOWN_REVISIONS


def test_migrations_build_exactly_the_models(db_url):
    engine = db.get_engine(db_url)  # a new database is created through the migrations
    assert db.current_revision(engine) == SCHEMA_REVISION
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def _downgrade_to(engine, revision):
    from alembic import command

    db.run_migrations(engine, command.downgrade, revision)


def test_older_schema_is_refused_until_upgrade(db_url, cli):
    engine = db.get_engine(db_url)
    _downgrade_to(engine, "0001_initial")
    db._engine_for.cache_clear()
    with pytest.raises(ReproError, match=r"older than .*run `repro db upgrade`"):
        db.get_engine(db_url)
    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert f"0001_initial -> {SCHEMA_REVISION}" in out
    db._engine_for.cache_clear()
    assert db.current_revision(db.get_engine(db_url)) == SCHEMA_REVISION


def test_newer_schema_is_refused(db_url, cli):
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    db._engine_for.cache_clear()
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

    from registry.db import session_scope
    from registry.lineage import lineage_tree
    from registry.models import LineageEdgeRow, LineageNodeRow
    from registry.recipes import load_recipes
    from registry.sync import sync

    engine = db.get_engine(db_url)
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
    db._engine_for.cache_clear()
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    db._engine_for.cache_clear()
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
    _downgrade_to(db.get_engine(db_url), "0003_step_series")
    with db.get_engine(db_url).connect() as conn:
        assert _edge_rows(conn) == before


def _old_metric_rows(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(
        "SELECT id, run_id, name, value, step, kind, protocol FROM run_metrics ORDER BY id"))]


def test_upgrade_numbers_runs_and_keys_metrics_by_them_and_back(db_url, cli):
    """0005: each run gets a seq in created order; metric rows name their run by it and keep their
    kind, name, value, step, protocol and order within the run (a repeated eval name included); the
    downgrade gives back the old rows in that order. Writes after the upgrade continue both numberings."""
    import json as _json
    from datetime import datetime, timezone

    from sqlalchemy import select

    from registry.db import session_scope
    from registry.models import RunMetricRow, RunRow
    from registry.queries import add_run_metrics, replace_eval_metrics, run_metrics
    from runner.compare import latest_metrics
    from tests.registry.graph_helpers import record_run

    engine = db.get_engine(db_url)
    with session_scope(db_url) as s:  # created out of id order, and out of insertion order
        record_run(s, "run-b", minutes=2)
        record_run(s, "run-a", minutes=5)
        record_run(s, "run-c", minutes=2)
    _downgrade_to(engine, "0004_lineage_nodes")
    when = datetime(2026, 11, 2, tzinfo=timezone.utc)
    old_style = [  # interleaved runs; run-a's ifeval twice (the later one wins in compare)
        ("run-a", "train_loss_last", 1.5, None, "final", None),
        ("run-b", "heldout_loss", 1.75, None, "final", None),
        ("run-a", "ifeval", 0.25, None, "eval", {"harness": "repro", "shots": 0}),
        ("run-a", "heldout_loss", 1.7, None, "final", None),
        ("run-c", "loss", 2.0, 7, "train", None),
        ("run-a", "ifeval", 0.5, None, "eval", {"harness": "repro", "shots": 0}),
        ("run-b", "gsm8k", 0.125, None, "eval", None),
    ]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO run_metrics (run_id, name, value, step, kind, protocol, created_at) "
                          "VALUES (:r, :n, :v, :s, :k, :p, :t)"),
                     [{"r": r, "n": n, "v": v, "s": st, "k": k, "p": None if p is None else _json.dumps(p), "t": when}
                      for r, n, v, st, k, p in old_style])
        before = _old_metric_rows(conn)
    db._engine_for.cache_clear()
    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert f"0004_lineage_nodes -> {SCHEMA_REVISION}" in out
    db._engine_for.cache_clear()

    def as_old(rows) -> list[tuple]:
        return [(r.run_id, r.name, r.value, r.step, r.kind, r.protocol) for r in rows]

    with session_scope(db_url) as s:
        seqs = dict(s.execute(select(RunRow.id, RunRow.seq)).all())
        assert seqs == {"run-b": 1, "run-c": 2, "run-a": 3}  # created_at, then id
        for run_id in ("run-a", "run-b", "run-c"):
            assert as_old(run_metrics(s, run_id)) == [r for r in old_style if r[0] == run_id]
        assert as_old(run_metrics(s, "run-a", kind="eval")) == [old_style[2], old_style[5]]
        assert latest_metrics(s, "run-a") == [
            {"name": "ifeval", "value": 0.5, "protocol": {"harness": "repro", "shots": 0}, "kind": "eval"},
            {"name": "train_loss_last", "value": 1.5, "protocol": {}, "kind": "final"},
            {"name": "heldout_loss", "value": 1.7, "protocol": {}, "kind": "final"}]
        rows = s.scalars(select(RunMetricRow).where(RunMetricRow.run_id == "run-a")
                         .order_by(RunMetricRow.position)).all()
        assert [(r.run_seq, r.position) for r in rows] == [(3, 0), (3, 1), (3, 2), (3, 3)]
    with session_scope(db_url) as s:  # writes continue the numbering
        record_run(s, "run-d", minutes=1)
        add_run_metrics(s, "run-d", [{"name": "x", "value": 1.0, "kind": "final"}])
        replace_eval_metrics(s, "run-a", ["ifeval"])
        add_run_metrics(s, "run-a", [{"name": "ifeval", "value": 0.75, "kind": "eval"}])
    with session_scope(db_url) as s:
        assert s.scalar(select(RunRow.seq).where(RunRow.id == "run-d")) == 4
        assert as_old(run_metrics(s, "run-d")) == [("run-d", "x", 1.0, None, "final", None)]
        assert [(r.name, r.value, r.position) for r in s.scalars(select(RunMetricRow).where(
            RunMetricRow.run_id == "run-a").order_by(RunMetricRow.position))] == [
            ("train_loss_last", 1.5, 0), ("heldout_loss", 1.7, 2), ("ifeval", 0.75, 3)]  # after the last
        s.execute(text("DELETE FROM run_metrics WHERE run_seq IN (SELECT seq FROM runs WHERE id = 'run-d')"))
        s.execute(text("DELETE FROM lineage_edges WHERE child_id IN "
                       "(SELECT id FROM lineage_nodes WHERE key = 'run:run-d')"))
        s.execute(text("DELETE FROM runs WHERE id = 'run-d'"))
        replace_eval_metrics(s, "run-a", ["ifeval"])
        add_run_metrics(s, "run-a", [{"name": "ifeval", "value": 0.25, "kind": "eval",
                                      "protocol": {"harness": "repro", "shots": 0}},
                                     {"name": "ifeval", "value": 0.5, "kind": "eval",
                                      "protocol": {"harness": "repro", "shots": 0}}])

    _downgrade_to(db.get_engine(db_url), "0004_lineage_nodes")
    with db.get_engine(db_url).connect() as conn:
        back = _old_metric_rows(conn)
        run_cols = [r[0] for r in conn.execute(text("SELECT * FROM runs")).cursor.description]
    assert "seq" not in run_cols

    def loaded(rows):  # protocol as stored text on SQLite, parsed on PostgreSQL
        return [r[1:6] + ((_json.loads(r[6]) if isinstance(r[6], str) else r[6]),) for r in rows]

    order = {"run-b": 0, "run-c": 1, "run-a": 2}
    expected = sorted(loaded(before), key=lambda r: order[r[0]])  # stable: id order within a run
    expected = [r for r in expected if not (r[0] == "run-a" and r[1] == "ifeval")] + [
        r for r in expected if r[0] == "run-a" and r[1] == "ifeval"]  # rewritten last, as after the writes above
    assert loaded(back) == expected
    assert [r[0] for r in back] == list(range(1, len(back) + 1))
