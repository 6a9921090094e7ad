"""`repro compare` on each smoke run: evaluated with its stage's suites, judged against the registry's references."""

from __future__ import annotations

import json

import pytest

from runner.references import SUITES
from tests.runner.conftest import CHAINS, run_cli

FAMILY = {"tulu3-8b": "tulu3", "smollm2-135m": "smollm2"}
CASES = [(recipe, stage) for recipe, stages in CHAINS.items() for stage in stages]


@pytest.mark.parametrize("recipe, stage", CASES)
def test_smoke_run_is_a_regression_check(in_smoke_home, recipe, stage, tmp_path):
    run_id = in_smoke_home[(recipe, stage)]["run_id"]
    for suite in SUITES[(FAMILY[recipe], stage)]:
        code, out, err = run_cli("eval", run_id, "--suite", suite, "--json")
        assert code == 0, err
    png = tmp_path / "scorecard.png"
    code, out, err = run_cli("compare", run_id, "--json", "--plot", str(png))
    assert code == 0, err
    doc = json.loads(out)
    verdicts = {m["name"]: m["verdict"] for m in doc["metrics"] if m["verdict"] != "no counterpart"}
    # Against the project's own earlier smoke runs: unchanged (or too few items), never "reproduced".
    assert verdicts and set(verdicts.values()) <= {"unchanged", "too few items to judge"}, doc
    assert "unchanged" in verdicts.values(), doc
    assert png.stat().st_size > 1000


def test_compare_exits_1_when_a_metric_changed(in_smoke_home, tmp_path, monkeypatch):
    from runner.compare import smoke_references_path

    refs = json.loads(smoke_references_path().read_text())
    entry = refs["tulu3-8b:rm"]
    name = next(iter(entry))
    entry[name]["value"] = 0.0  # a reference the run cannot be near
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))
    monkeypatch.setenv("REPRO_SMOKE_REFERENCES", str(path))
    run_id = in_smoke_home[("tulu3-8b", "rm")]["run_id"]
    run_cli("eval", run_id, "--suite", "preference", "--json")
    code, out, err = run_cli("compare", run_id, "--json")
    assert code == 1
    assert any(m["verdict"] == "changed" for m in json.loads(out)["metrics"])


def test_compare_an_unknown_run_is_refused(in_smoke_home):
    code, out, err = run_cli("compare", in_smoke_home[("smollm2-135m", "sft")]["run_id"] + "-nope")
    assert code == 2 and err.count("\n") == 1


def test_references_evaluate_a_run_without_the_cli(in_smoke_home):
    # runner.references calls the evaluation directly; what it would write for a stage has the same metric
    # names as the registry's references for that stage, and the metrics land on the run.
    from registry.db import session_scope
    from registry.queries import run_metrics
    from runner.compare import load_smoke_references
    from runner.references import evaluate_run, reference_document

    run_id = in_smoke_home[("smollm2-135m", "sft")]["run_id"]
    document = reference_document(evaluate_run(run_id, "smollm2", "sft"))
    assert set(document) == set(load_smoke_references()["smollm2-135m:sft"])
    assert all("data_path" not in entry["protocol"] for entry in document.values())
    with session_scope() as session:
        assert set(document) <= {row.name for row in run_metrics(session, run_id, kind="eval")}
