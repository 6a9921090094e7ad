"""`repro show RECIPE` shows the published metrics of the recipe's checkpoints, with protocol and source."""

from __future__ import annotations

import json

from registry.recipes import load_recipes


def _expected(raw, recipe):
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
    for _checkpoint, benchmark, value, source in _expected(raw, "tulu3-8b")[:5]:
        assert benchmark in out and f"{value:g}" in out and source.split()[0] in out
    assert "harness=OLMES" in out


def test_list_served_from_the_synced_index_equals_the_validated_list(cli, isolated_home, tmp_path, monkeypatch):
    from registry import light_db
    from registry.recipes import content_hash, load_recipes

    commands = (["list", "--json"], ["list"], ["list", "--family", "smollm2", "--json"], ["list", "--family", "x"])
    live = [cli(*argv) for argv in commands]  # no database yet: validated from the file
    assert light_db.indexed_recipes() is None
    code, _, err = cli("db", "sync")
    assert code == 0, err
    raw = light_db.indexed_recipes()
    assert raw is not None and content_hash(raw) == content_hash(load_recipes().raw)
    assert [cli(*argv) for argv in commands] == live
    # An edited file is not served from the index: it is validated again.
    edited = tmp_path / "recipes.json"
    data = load_recipes().raw
    edited.write_text(json.dumps({**data, "format_version": "two"}))
    monkeypatch.setenv("REPRO_RECIPES", str(edited))
    assert light_db.indexed_recipes() is None
    code, _, err = cli("list", "--json")
    assert code == 2 and "format_version" in err
