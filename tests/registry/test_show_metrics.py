"""`repro show RECIPE` shows the published metrics of the recipe's checkpoints, with protocol and source."""

from __future__ import annotations

import json

from registry.recipes import load_recipes


def _expected(raw, recipe):  # noqa: ANN001, ANN202
    """(checkpoint, benchmark, value, source) of every metric recipes.json states for the recipe's outputs."""
    return [(out["checkpoint"], m["benchmark"], m["value"], m["source"])
            for st in raw["recipes"][recipe]["stages"] for out in st.get("outputs", [])
            for m in (raw["checkpoints"].get(out["checkpoint"]) or {}).get("metrics", [])]


def test_show_json_lists_every_published_metric_of_each_recipe(cli):
    raw = load_recipes().raw
    for recipe in raw["recipes"]:
        code, out, err = cli("show", recipe, "--json")
        assert code == 0, err
        rows = json.loads(out)["published_metrics"]
        assert [(r["checkpoint"], r["benchmark"], r["value"], r["source"]) for r in rows] == _expected(raw, recipe)
        assert all(r["protocol"] and r["stage"] in [s["name"] for s in raw["recipes"][recipe]["stages"]] for r in rows)
    code, out, _ = cli("show", "tulu3-8b", "--json")
    final = {r["benchmark"]: r for r in json.loads(out)["published_metrics"]
             if r["checkpoint"] == "allenai/Llama-3.1-Tulu-3-8B"}
    assert final["GSM8K"]["value"] == 87.6 and final["GSM8K"]["protocol"]["shots"] == 8  # Tülu 3 model card


def test_show_table_has_the_metrics_with_protocol_and_source(cli):
    raw = load_recipes().raw
    code, out, err = cli("show", "tulu3-8b")
    assert code == 0, err
    assert "published metrics" in out
    for checkpoint, benchmark, value, source in _expected(raw, "tulu3-8b")[:5]:
        assert benchmark in out and f"{value:g}" in out and source.split()[0] in out
    assert "harness=OLMES" in out
