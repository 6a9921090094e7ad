"""The one tokenizer loader (runner/data/tokenizer.py): the template and pad rules each caller relies on.

Tülu sets its template on every tokenizer a stage loads; SmolLM2's later stages keep the template their
input checkpoint was saved with unless the checkpoint is foreign (SFT's base, a Hub model); evaluation
replaces or only fills a template as asked; a missing pad token becomes `<pad>` only where the recorded
Tülu code added it, EOS everywhere else.
"""

from __future__ import annotations

import dataclasses

import pytest

from registry.errors import ReproError
from registry.recipes import load_recipes
from runner.data.templates import CHATML_SMOLLM2_JINJA, TULU_JINJA
from runner.data.tokenizer import build_tokenizer, fixture_corpus, fixture_tokenizer, load_tokenizer, stage_tokenizer
from runner.plan import resolve


@pytest.fixture(scope="module")
def plans():
    reg = load_recipes()
    return {(recipe, stage): resolve(reg, recipe, stage, "smoke")
            for recipe, stage in (("tulu3-8b", "dpo"), ("smollm2-135m", "dpo"), ("smollm2-135m", "sft"))}


def _saved(folder, kind: str, template: str | None, pad: bool = True):
    tok = build_tokenizer(kind, fixture_corpus(kind)[:60])
    if template is not None:
        tok.chat_template = template
    if not pad:
        tok.pad_token = None
    tok.save_pretrained(folder)
    return folder


def test_tulu_stages_always_set_the_tulu_template(tmp_path, plans):
    folder = _saved(tmp_path / "tok", "tulu", CHATML_SMOLLM2_JINJA)
    plan = plans[("tulu3-8b", "dpo")]
    assert stage_tokenizer(plan, folder).chat_template == TULU_JINJA
    assert stage_tokenizer(plan, folder, foreign=True).chat_template == TULU_JINJA


def test_smollm2_keeps_the_saved_template_unless_the_checkpoint_is_foreign(tmp_path, plans):
    folder = _saved(tmp_path / "tok", "smollm2", TULU_JINJA)
    assert stage_tokenizer(plans[("smollm2-135m", "dpo")], folder).chat_template == TULU_JINJA
    assert stage_tokenizer(plans[("smollm2-135m", "sft")], folder, foreign=True).chat_template == CHATML_SMOLLM2_JINJA
    bare = _saved(tmp_path / "bare", "smollm2", None)
    assert not getattr(stage_tokenizer(plans[("smollm2-135m", "dpo")], bare), "chat_template", None)


def test_pad_is_tulus_added_token_only_in_the_recorded_profile(tmp_path, plans):
    folder = _saved(tmp_path / "tok", "tulu", None, pad=False)
    smoke = plans[("tulu3-8b", "dpo")]
    assert stage_tokenizer(smoke, folder).pad_token == "<|end_of_text|>"
    recorded = dataclasses.replace(smoke, profile="recorded")
    assert stage_tokenizer(recorded, folder).pad_token == "<pad>"
    smollm2 = dataclasses.replace(plans[("smollm2-135m", "dpo")], profile="recorded")
    assert stage_tokenizer(smollm2, folder).pad_token == "<|end_of_text|>"  # EOS outside Tülu


def test_evaluation_replaces_or_only_fills_the_template(tmp_path):
    folder = _saved(tmp_path / "tok", "smollm2", TULU_JINJA)
    assert load_tokenizer(folder, template="chatml").chat_template == CHATML_SMOLLM2_JINJA
    assert load_tokenizer(folder, template_if_missing="chatml").chat_template == TULU_JINJA
    bare = _saved(tmp_path / "bare", "smollm2", None)
    assert load_tokenizer(bare, template_if_missing="chatml").chat_template == CHATML_SMOLLM2_JINJA
    with pytest.raises(ReproError, match="unknown chat template 'chatlm'"):
        load_tokenizer(bare, template="chatlm")


def test_evaluate_names_a_folder_without_a_tokenizer(tmp_path):
    from runner.evaluate import load_tokenizer as eval_tokenizer

    with pytest.raises(ReproError, match="no tokenizer saved with the model"):
        eval_tokenizer(tmp_path)


def test_fixture_tokenizer_has_the_plans_template_and_refuses_a_real_tokenizer(plans):
    assert fixture_tokenizer(plans[("smollm2-135m", "sft")]).chat_template == CHATML_SMOLLM2_JINJA
    recorded = resolve(load_recipes(), "tulu3-8b", "sft", "recorded")
    with pytest.raises(ReproError, match="--input init=PATH"):
        fixture_tokenizer(recorded)
