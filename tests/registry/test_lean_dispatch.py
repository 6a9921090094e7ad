"""The lean dispatch (registry.lean.serve) answers `lineage` and `runs --json` exactly as the typer commands
do, on a database with a smoke-chain-like graph, without importing typer or SQLAlchemy; everything it does not
serve falls through to typer untouched."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from registry.db import session_scope
from registry.queries import add_edges
from registry.recipes import content_hash, load_recipes
from registry.sync import sync
from tests.registry.graph_helpers import record_rlvr_pair, record_run

SFT_MIX = "dataset:allenai/tulu-3-sft-mixture@md5:aaaa"
PREFS = "dataset:allenai/tulu-3-pref@md5:bbbb"

SERVED = [
    *[["lineage", target, *extra]
      for target in ("rlvr-1", "sft-1", "dpo", "tulu3-8b:dpo", "tulu3-8b:rlvr", "allenai/Llama-3.1-Tulu-3-8B",
                     "HuggingFaceH4/ultrafeedback_binarized", "allenai/tulu-3-sft-mixture")
      for extra in ([], ["--json"], ["--downstream"], ["--downstream", "--json"], ["--verify"],
                    ["--json", "--verify"])],
    ["lineage", "--json", "sft-1"],  # options before the target, as click accepts them
    ["lineage", "--verify", "--json", "--verify", "dpo-1"],  # a flag given twice
    ["lineage", "no-such-thing"],  # exit 2, one line
    ["lineage", "tulu3-8b:no-stage", "--json"],
    ["lineage", "tulu9:sft"],
    ["runs", "--json"],
    ["runs", "--json", "--limit", "2"],
    ["runs", "--limit=3", "--json"],
    ["runs", "--json", "--offset", "1", "--limit", "2"],
    ["runs", "--json", "--recipe", "tulu3-8b"],
    ["runs", "--json", "--recipe=tulu9"],  # exit 2: unknown recipe
    ["runs", "--json", "--limit", "2", "--after", "rlvr-2"],
    ["runs", "--json", "--after", "no-such-run"],  # exit 2
    ["runs", "--json", "--limit", "0"],  # exit 2
]

FALLS_THROUGH = [
    ["lineage", "sft-1", "--depth", "1"], ["lineage", "sft-1", "--help"], ["lineage", "sft-1", "--bogus"],
    ["lineage"], ["lineage", "sft-1", "dpo-1"], ["lineage", "sft-1", "--downstream", "--verify"],
    ["lineage", "--", "sft-1"], ["runs"], ["runs", "--limit", "2"], ["runs", "--json", "--limit", "x"],
    ["runs", "--json", "--limit"], ["runs", "--json", "--limit", "-1"], ["runs", "--json", "--bogus"],
    ["runs", "--json", "--help"],
    ["show", "tulu3-8b"],
]


def _smoke_like_chain(db_url, tmp_path) -> None:
    """A smoke chain's shape: SFT -> DPO (init and reference from one SFT run) and RM -> two RLVR runs, an
    eval run of the RLVR output, with file-backed hashed inputs; one of them tampered, so --verify fails."""
    from registry.hashing import dvc_hash

    runs = tmp_path / "runs"
    good, bad = runs / "sft-1" / "checkpoint", runs / "sft-2" / "checkpoint"
    for ckpt in (good, bad):
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"weights")
    with session_scope(db_url) as s:
        sync(s, load_recipes())
        record_run(s, "sft-1", parents=[(SFT_MIX, "train", "h-mix", None)], run_dir=str(runs / "sft-1"),
                   final_metrics={"train_loss_last": 1.5})
        record_run(s, "sft-2", parents=[(SFT_MIX, "train", "h-mix", None)], minutes=1, run_dir=str(runs / "sft-2"))
        add_edges(s, [("run:sft-1", "checkpoint:run:sft-1", "output", dvc_hash(good), str(good)),
                      ("run:sft-2", "checkpoint:run:sft-2", "output", dvc_hash(bad), str(bad))])
        record_run(s, "dpo-1", stage="dpo", minutes=2, parents=[("run:sft-1", "init", dvc_hash(good), str(good)),
                                                                ("run:sft-1", "reference", dvc_hash(good), str(good)),
                                                                (PREFS, "train", "h-pref", None)])
        record_run(s, "rm-1", stage="rm", minutes=3, parents=[("run:sft-2", "init", dvc_hash(bad), str(bad)),
                                                              (PREFS, "train", "h-pref", None)])
        record_rlvr_pair(s)
        add_edges(s, [("run:rlvr-1", "checkpoint:run:rlvr-1", "output", "h5", None)])
        record_run(s, "eval-1", stage="rlvr", minutes=7, status="failed",
                   parents=[("checkpoint:run:rlvr-1", "evaluated", "h5", None)])
    (bad / "model.safetensors").write_bytes(b"tampered")


def _capture(monkeypatch, call):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        code = call()
    finally:
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    return code, out.getvalue(), err.getvalue()


def test_lean_and_typer_answer_identically(db_url, cli, tmp_path, monkeypatch):
    from registry.lean import serve

    _smoke_like_chain(db_url, tmp_path)
    codes = set()
    for argv in SERVED:
        lean = _capture(monkeypatch, lambda: serve(argv))  # noqa: B023 - called at once
        assert lean[0] is not None, argv  # the lean path served it
        assert lean == cli(*argv), argv
        codes.add(lean[0])
    assert codes == {0, 1, 2}  # answers, a failed --verify and bad targets were all compared
    code, out, err = _capture(monkeypatch, lambda: serve(["lineage", "rm-1", "--verify"]))
    assert code == 1 and "modified: " in err and "sft-2" in err and "rm-1" in out
    assert [r["id"] for r in json.loads(_capture(monkeypatch, lambda: serve(["runs", "--json", "--limit", "2"]))[1])] \
        == ["eval-1", "rlvr-2"]
    for argv in FALLS_THROUGH:
        assert _capture(monkeypatch, lambda: serve(argv)) == (None, "", ""), argv  # noqa: B023


def test_lean_falls_back_on_a_database_it_cannot_read(db_url, cli, tmp_path, monkeypatch):
    """Before the database indexes recipes.json (no sync yet), the lean path serves nothing: typer's command
    creates and syncs it."""
    from registry.lean import serve

    if db_url.startswith("sqlite"):
        assert _capture(monkeypatch, lambda: serve(["lineage", "tulu3-8b:sft", "--json"])) == (None, "", "")
    code, out, _ = cli("lineage", "tulu3-8b:sft", "--json")
    assert code == 0 and json.loads(out)["target"] == "stage:tulu3-8b:sft"
    assert _capture(monkeypatch, lambda: serve(["lineage", "tulu3-8b:sft", "--json"])) == (0, out, "")


def test_lean_lineage_trusts_only_the_recipes_file_the_database_indexed(db_url, cli, tmp_path, monkeypatch):
    """A recipes.json other than the synced one (edited, malformed, another shape) is never read unvalidated:
    the lean path steps aside and typer's command validates, syncs or says what is wrong."""
    from registry.lean import serve
    from registry.recipes import recipes_path

    _smoke_like_chain(db_url, tmp_path)
    raw = json.loads(recipes_path().read_text(encoding="utf-8"))
    raw["recipes"]["tulu3-8b"]["notes"] = [*raw["recipes"]["tulu3-8b"].get("notes", [])]
    raw["sources"] = {**raw["sources"]}
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw, indent=1), encoding="utf-8")  # same content: same hash, still served
    monkeypatch.setenv("REPRO_RECIPES", str(edited))
    assert _capture(monkeypatch, lambda: serve(["lineage", "sft-1", "--json"]))[0] == 0
    for text in ("{not json", "[1, 2]", '{"recipes": {"x": {"stages": [{}]}}}',
                 json.dumps({**raw, "format_version": 2})):
        edited.write_text(text, encoding="utf-8")
        assert _capture(monkeypatch, lambda: serve(["lineage", "sft-1", "--json"])) == (None, "", ""), text
        code, _, err = cli("lineage", "sft-1", "--json")
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (text, err)


def test_file_hash_is_the_recipes_content_hash():
    from registry.light_db import file_hash

    raw = load_recipes().raw
    assert file_hash(raw) == content_hash(raw)


PROBE = """
import sys
sys.argv = ["repro", *{argv!r}]
import runner.cli
try:
    runner.cli.main()
finally:
    print("MODULES=" + ",".join(m for m in ("typer", "sqlalchemy", "pydantic") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["lineage", "rlvr-1", "--json"], ["lineage", "sft-1", "--downstream"],
                                  ["lineage", "rm-1", "--verify"], ["runs", "--json", "--limit", "2"]])
def test_lean_path_imports_neither_typer_nor_sqlalchemy(db_url, tmp_path, argv):
    _smoke_like_chain(db_url, tmp_path)
    env = dict(os.environ, REPRO_DATABASE_URL=db_url)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == (1 if "--verify" in argv else 0), proc.stderr
    modules = proc.stderr.rsplit("MODULES=", 1)[1].strip().split(",")
    assert "typer" not in modules and "sqlalchemy" not in modules, proc.stderr
    if db_url.startswith("sqlite") or argv[0] == "lineage":  # the indexed recipes.json needs no validation
        assert "pydantic" not in modules, proc.stderr
