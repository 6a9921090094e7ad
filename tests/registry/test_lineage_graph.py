"""Lineage walks in the database: the same trees as the previous in-Python walk, unbounded depth with
an explicit --depth cut, cycles refused when written, relative paths that survive a moved runs dir."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select

from registry.db import session_scope
from registry.errors import ReproError
from registry.lineage import lineage_tree, reachable
from registry.models import LineageEdgeRow
from registry.queries import add_edges
from registry.recipes import load_recipes
from registry.sync import sync
from tests.registry.graph_helpers import previous_lineage_tree, previous_reachable, record_rlvr_pair, record_run

SFT_MIX = "dataset:allenai/tulu-3-sft-mixture@md5:aaaa"
PREFS = "dataset:allenai/tulu-3-pref@md5:bbbb"


def _shared_ancestor_graph(db_url):
    """The recipes' graph plus a chain of runs in which ancestors are shared: the DPO run takes the
    same SFT run as init and reference, the RM run shares its datasets, two RLVR runs share all."""
    with session_scope(db_url) as s:
        sync(s, load_recipes())
        record_run(s, "sft-1", parents=[(SFT_MIX, "train", "h-mix", None)])
        record_run(s, "sft-2", parents=[(SFT_MIX, "train", "h-mix", None)], minutes=1)
        record_run(s, "dpo-1", stage="dpo", minutes=2, parents=[("run:sft-1", "init", "h1", None),
                                                                ("run:sft-1", "reference", "h1", None),
                                                                (PREFS, "train", "h-pref", None)])
        record_run(s, "rm-1", stage="rm", minutes=3, parents=[("run:sft-2", "init", "h2", None),
                                                              (PREFS, "train", "h-pref", None)])
        record_rlvr_pair(s)
        add_edges(s, [("run:rlvr-1", "checkpoint:run:rlvr-1", "output", "h5", None)])
        nodes = set(s.scalars(select(LineageEdgeRow.parent))) | set(s.scalars(select(LineageEdgeRow.child)))
    return sorted(nodes)


def test_trees_and_reach_equal_the_previous_walk(db_url):
    nodes = _shared_ancestor_graph(db_url)
    with session_scope(db_url) as s:
        for node in nodes:
            for downstream in (False, True):
                new = lineage_tree(s, node, downstream=downstream).to_json()
                assert new == previous_lineage_tree(s, node, downstream=downstream).to_json(), (node, downstream)
                assert set(reachable(s, node, downstream)) == previous_reachable(s, node, downstream), node
        tree = lineage_tree(s, "run:rlvr-1").to_json()
    # The shared SFT run appears expanded once; its later occurrences are marked repeated.
    text = json.dumps(tree)
    assert text.count('"node": "run:sft-1"') == 1 + text.count('"node": "run:sft-1", "repeated": true')
    assert '"node": "run:dpo-1", "repeated": true' in text


def test_cli_lineage_json_of_a_run(db_url, cli):
    _shared_ancestor_graph(db_url)
    code, out, err = cli("lineage", "rlvr-1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["target"] == "run:rlvr-1" and "depth" not in doc  # unchanged document without --depth
    with session_scope(db_url) as s:
        assert doc["tree"] == previous_lineage_tree(s, "run:rlvr-1").to_json()
    code, out, err = cli("lineage", "sft-1", "--downstream", "--json")
    assert code == 0, err
    assert {"run:dpo-1", "run:rlvr-1", "run:rlvr-2", "checkpoint:run:rlvr-1"} <= set(json.loads(out)["impacted"])


def _chain(db_url, length: int) -> None:
    with session_scope(db_url) as s:
        sync(s, load_recipes())
        for i in range(length):
            parents = [(f"run:c{i - 1}", "init", f"h{i}", None)] if i else []
            record_run(s, f"c{i}", minutes=i, parents=parents)


def test_depth_is_unbounded_by_default(db_url, cli):
    _chain(db_url, 30)  # deeper than the 12 levels the previous walk stopped at without a word
    code, out, err = cli("lineage", "c29", "--json")
    assert code == 0, err
    text = out
    assert all(f'"run:c{i}"' in text for i in range(30))
    assert "truncated" not in text
    with session_scope(db_url) as s:
        old = json.dumps(previous_lineage_tree(s, "run:c29", max_depth=12).to_json())
    assert '"run:c10"' not in old  # what the old default lost


def test_depth_flag_cuts_and_says_where(db_url, cli):
    _chain(db_url, 10)
    code, out, err = cli("lineage", "c9", "--depth", "3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["depth"] == 3 and doc["cut"] == ["run:c6"]
    node = doc["tree"]
    for expected in ("run:c8", "run:c7", "run:c6"):
        node = next(c for c in node["children"] if c["node"].startswith("run:"))
        assert node["node"] == expected
    assert node.get("truncated") is True and "children" not in node
    # At the cut, nodes with more above them are reported; a leaf (the code pin) is not.
    code, out, _ = cli("lineage", "c2", "--depth", "1", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["cut"] == ["stage:tulu3-8b:sft", "run:c1"]
    assert [c.get("truncated", False) for c in doc["tree"]["children"]] == [False, True, True]
    code, out, err = cli("lineage", "c9", "--depth", "3")
    assert code == 0 and "cut at depth 3 below 1 node(s): run:c6" in out
    code, out, err = cli("lineage", "c9", "--depth", "0")
    assert code == 2 and "--depth must be ≥ 1" in err and err.count("\n") == 1 and out == ""


def test_cycles_are_refused_when_written(db_url):
    with session_scope(db_url) as s:
        add_edges(s, [("n:a", "n:b", "init", None, None), ("n:b", "n:c", "init", None, None)])
    for edge in [("n:c", "n:a", "init", None, None), ("n:b", "n:b", "self", None, None)]:
        with pytest.raises(ReproError, match="would close a cycle"):
            with session_scope(db_url) as s:
                add_edges(s, [("n:x", "n:y", "ok", None, None), edge])
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(LineageEdgeRow)) == 2  # the batch was rolled back


def test_walks_end_on_a_cycle_recorded_before_refusal(db_url):
    with session_scope(db_url) as s:  # an old database may hold one: written around add_edges
        s.add_all([LineageEdgeRow(parent=p, child=c, relation="init", origin="run")
                   for p, c in (("n:a", "n:b"), ("n:b", "n:c"), ("n:c", "n:a"))])
    with session_scope(db_url) as s:
        for downstream in (False, True):
            tree = lineage_tree(s, "n:a", downstream=downstream)
            assert tree.to_json() == previous_lineage_tree(s, "n:a", downstream=downstream).to_json()
            assert sorted(reachable(s, "n:a", downstream)) == ["n:b", "n:c"]


def test_verify_survives_a_moved_runs_directory(db_url, cli, tmp_path, monkeypatch):
    from registry.hashing import dvc_hash

    runs = tmp_path / "runs"
    monkeypatch.setenv("REPRO_RUNS_DIR", str(runs))
    ckpt = runs / "sft-1" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights")
    digest = dvc_hash(ckpt)
    with session_scope(db_url) as s:
        sync(s, load_recipes())
        record_run(s, "sft-1", run_dir=str(runs / "sft-1"))
        add_edges(s, [("run:sft-1", "checkpoint:run:sft-1", "output", digest, str(ckpt))])
        record_run(s, "dpo-1", stage="dpo", minutes=1, parents=[("run:sft-1", "init", digest, str(ckpt))])
        note = json.loads(s.scalar(select(LineageEdgeRow.note).where(LineageEdgeRow.child == "run:dpo-1",
                                                                     LineageEdgeRow.relation == "init")))
    assert note["relpath"] == "sft-1/checkpoint" and note["base"] == "runs" and note["path"] == str(ckpt)

    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    shutil.move(str(runs), str(moved))
    monkeypatch.setenv("REPRO_RUNS_DIR", str(moved))
    code, out, err = cli("lineage", "dpo-1", "--verify", "--json")
    assert code == 0, err
    checks = json.loads(out)["verify"]
    assert checks and all(c["status"] == "ok" for c in checks)
    assert {c["detail"] for c in checks} == {str(moved / "sft-1" / "checkpoint")}

    (moved / "sft-1" / "checkpoint" / "model.safetensors").write_bytes(b"tampered")
    code, out, err = cli("lineage", "dpo-1", "--verify", "--json")
    assert code == 1 and {c["status"] for c in json.loads(out)["verify"]} == {"modified"}


def test_cold_path_answers_exactly_as_the_sqlalchemy_path(db_url, cli, monkeypatch):
    import registry.light_db as light

    _shared_ancestor_graph(db_url)
    real, taken = light.lineage_walk, []

    def spy(*args, **kwargs):
        answer = real(*args, **kwargs)
        taken.append(answer is not None)
        return answer

    targets = ("rlvr-1", "sft-1", "tulu3-8b:dpo", "allenai/Llama-3.1-Tulu-3-8B",
               "HuggingFaceH4/ultrafeedback_binarized")
    for target in targets:
        for extra in ([], ["--downstream"], ["--verify"], ["--json"], ["--downstream", "--json"]):
            monkeypatch.setattr(light, "lineage_walk", spy)
            cold = cli("lineage", target, *extra)
            monkeypatch.setattr(light, "lineage_walk", lambda *a, **k: None)
            assert cli("lineage", target, *extra) == cold, (target, extra)
    assert taken and all(taken)  # the synced database had the compiled walks: the cold path answered
    code, _, err = cli("lineage", "no-such-thing")
    assert code == 2 and "unknown lineage target" in err and err.count("\n") == 1


PROBE = """
import sys
from registry.cli import run_app
from runner.cli import app
code = run_app(app, sys.argv[1:])
print("SQLALCHEMY=" + str("sqlalchemy" in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_cold_lineage_and_runs_import_no_sqlalchemy_once_synced(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, REPRO_HOME=str(tmp_path), REPRO_RUNS_DIR=str(tmp_path / "runs"))
    env.pop("REPRO_DATABASE_URL", None)
    first = subprocess.run([sys.executable, "-c", PROBE, "lineage", "tulu3-8b:rlvr", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "SQLALCHEMY=True" in first.stderr  # created and synced the database
    again = subprocess.run([sys.executable, "-c", PROBE, "lineage", "tulu3-8b:rlvr", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "SQLALCHEMY=False" in again.stderr, again.stderr
    assert again.stdout == first.stdout
    runs = subprocess.run([sys.executable, "-c", PROBE, "runs", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert runs.returncode == 0 and runs.stdout == "[]\n" and "SQLALCHEMY=False" in runs.stderr, runs.stderr


def test_one_writer_keeps_or_replaces_an_edge_and_stores_each_node_once(db_url):
    """add_edges is the one edge writer (run records, evaluations, converted checkpoints): an edge
    already there is kept, or with replace= given the new hash and path; a node's key is stored once
    however many edges use it, and the ORM spelling (LineageEdgeRow(parent=KEY)) shares the nodes."""
    from registry.models import LineageNodeRow

    with session_scope(db_url) as s:
        add_edges(s, [("checkpoint:base", "checkpoint:base@q4", "quantized-copy", "h-old", None)],
                  origin="conversion")
        add_edges(s, [("checkpoint:base", "checkpoint:base@q4", "quantized-copy", "h-new", None)])
        assert s.scalars(select(LineageEdgeRow.content_hash)).all() == ["h-old"]  # kept as recorded
        add_edges(s, [("checkpoint:base", "checkpoint:base@q4", "quantized-copy", "h-new", "/files/q4")],
                  origin="conversion", replace=True)
        edge = s.scalars(select(LineageEdgeRow)).one()
        assert (edge.parent, edge.child, edge.content_hash, edge.origin) == (
            "checkpoint:base", "checkpoint:base@q4", "h-new", "conversion")
        assert json.loads(edge.note)["path"] == "/files/q4"
        s.add(LineageEdgeRow(parent="checkpoint:base", child="run:eval-1", relation="evaluated", origin="run"))
        add_edges(s, [("checkpoint:base@q4", "run:eval-1", "evaluated", None, None)])
        s.flush()
        keys = s.scalars(select(LineageNodeRow.key).order_by(LineageNodeRow.key)).all()
        assert keys == ["checkpoint:base", "checkpoint:base@q4", "run:eval-1"]
        assert s.scalars(select(LineageEdgeRow.parent).where(LineageEdgeRow.child == "run:eval-1")
                         .order_by(LineageEdgeRow.id)).all() == ["checkpoint:base", "checkpoint:base@q4"]
        with pytest.raises(ReproError, match="would close a cycle"):
            add_edges(s, [("run:eval-1", "checkpoint:base", "init", None, None)])
