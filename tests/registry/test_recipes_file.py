"""recipes.json: canonical form, JSON Schema up to date, and every kind of bad file refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import ReproError
from registry.recipes import SCHEMA_PATH, canonical_text, json_schema, load_recipes, parse_text

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "recipes.json").read_text(encoding="utf-8")


def _data():
    return json.loads(TEXT)


def _stage(data, recipe, name):
    return next(s for s in data["recipes"][recipe]["stages"] if s["name"] == name)


def test_file_is_canonically_formatted():
    assert TEXT == canonical_text(json.loads(TEXT)), "run `python -m registry.format` to reformat recipes.json"


def test_json_schema_file_is_generated_from_the_models():
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema(), "regenerate with `python -m registry.format`"


def test_every_recipe_and_stage_present():
    reg = load_recipes(ROOT / "recipes.json")
    assert {n: r.stage_names for n, r in reg.recipes.items()} == {
        "tulu3-8b": ["sft", "dpo", "rm", "rlvr"],
        "tulu3-70b": ["sft", "dpo", "rlvr"],
        "tulu3-405b": ["sft", "dpo", "rlvr"],
        "smollm2-135m": ["pretrain", "sft", "dpo"],
        "smollm2-360m": ["pretrain", "sft", "dpo"],
        "smollm2-1.7b": ["pretrain", "sft", "dpo"],
    }


def _refused(text: str, *fragments: str) -> str:
    with pytest.raises(ReproError) as info:
        parse_text(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_malformed_json_names_line_and_column():
    _refused(TEXT[:200] + "}", "malformed JSON at line")


def test_unknown_key_names_its_path():
    data = _data()
    _stage(data, "tulu3-8b", "sft")["layout"]["gpu_count"] = 8
    _refused(canonical_text(data), "recipes.tulu3-8b.stages[0].layout.gpu_count", "unknown key")


def test_unknown_hyperparameter_suggests_the_nearest():
    data = _data()
    hps = _stage(data, "tulu3-8b", "sft")["hyperparameters"]
    hps["learning_rte"] = hps["learning_rate"]
    _refused(canonical_text(data), "learning_rte", "did you mean 'learning_rate'")


def test_wrong_type_is_refused():
    data = _data()
    _stage(data, "tulu3-8b", "dpo")["layout"]["gpus"] = "eight"
    _refused(canonical_text(data), "recipes.tulu3-8b.stages[1].layout.gpus")


@pytest.mark.parametrize("bad", [0, -4, 1.5])
def test_non_positive_batch_is_refused(bad):
    data = _data()
    _stage(data, "tulu3-8b", "sft")["hyperparameters"]["per_device_batch_size"]["value"] = bad
    _refused(canonical_text(data), f"per_device_batch_size={bad}: must be a positive integer")


def test_duplicate_recipe_names_are_refused():
    data = _data()
    block = canonical_text({"x": data["recipes"]["tulu3-8b"]})[1:-2]  # '"x": {...}' without the braces
    text = TEXT.replace('"recipes": {\n', '"recipes": {\n' + block.replace('"x"', '"tulu3-8b"', 1) + ",\n", 1)
    _refused(text, "duplicate key 'tulu3-8b'")


def test_parent_nothing_produces_is_refused():
    data = _data()
    data["checkpoints"]["ghost/model"] = {"kind": "sft", "published": False, "source": "tulu3-DOC-v2"}
    _stage(data, "tulu3-8b", "dpo")["inputs"][0]["checkpoint"] = "ghost/model"
    _refused(canonical_text(data), "'ghost/model': nothing produces it and no source publishes it")


def test_lineage_cycle_is_refused():
    data = _data()
    sft = _stage(data, "tulu3-8b", "sft")
    dpo_out = _stage(data, "tulu3-8b", "dpo")["outputs"][0]["checkpoint"]
    sft["inputs"].append({"role": "reference", "checkpoint": dpo_out, "source": "tulu3-DOC-v2"})
    _refused(canonical_text(data), "lineage cycle")


def test_undefined_source_tag_is_refused():
    data = _data()
    _stage(data, "tulu3-8b", "sft")["hyperparameters"]["seed"]["source"] = "made-up-tag §1"
    _refused(canonical_text(data), "source tag 'made-up-tag' is not defined")


def test_unknown_dataset_reference_suggests_nearest():
    data = _data()
    _stage(data, "tulu3-8b", "sft")["datasets"][0]["dataset"] = "allenai/tulu-3-sft-mixtur"
    _refused(canonical_text(data), "did you mean 'allenai/tulu-3-sft-mixture'")


def test_every_source_resolves_and_every_number_has_one():
    reg = load_recipes(ROOT / "recipes.json")
    for recipe in reg.recipes.values():
        for stage in recipe.stages:
            for key, item in stage.hyperparameters.items():
                assert item.source.split()[0] in reg.model.sources, (stage.name, key)


def test_bad_file_via_cli_writes_nothing(cli, tmp_path, monkeypatch, isolated_home):
    bad = tmp_path / "recipes.json"
    bad.write_text(TEXT.replace('"format_version": 1', '"format_version": 1,,', 1))
    monkeypatch.setenv("REPRO_RECIPES", str(bad))
    code, out, err = cli("runs")
    assert code == 2 and err.startswith("error: recipes.json: malformed JSON") and err.count("\n") == 1
    assert out == ""
    assert list(isolated_home.iterdir()) == []  # no database file was created
