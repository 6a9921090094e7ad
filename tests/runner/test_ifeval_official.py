"""The official IFEval instruction checkers (lighteval @ea46419's copy of Google's definitions) and SmolLM2's
published IFEval task (`extended|ifeval|0|0`) on a miniature model and a tiny google/IFEval mirror.

Every checker is tested on hand-built responses that follow and break it, at the edges of its relation;
the loose variant against strict; the four metrics against a hand count. The data never comes from the Hub:
the end-to-end test builds DIR/google/IFEval/ in IFEval's own schema and points REPRO_HUB_MIRROR at it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import ReproError
from runner.evaltasks import ifeval_checkers as ic

DE = "Dies ist ein deutscher Satz, der ganz sicher auf Deutsch geschrieben wurde."
EN = "This is a plain English sentence about the weather today."
EN_UPPER = "THIS IS AN ENGLISH SENTENCE WRITTEN IN CAPITAL LETTERS SO THAT IT IS EASY TO DETECT."
DE_UPPER = "DAS IST EIN LANGER DEUTSCHER SATZ, DER NUR AUS GROSSBUCHSTABEN BESTEHT UND NICHT ENGLISCH IST."
EN_LOWER = "this is an english sentence written in lowercase letters only."

# (instruction id, kwargs, response, followed?)
CASES = [
    ("keywords:existence", {"keywords": ["cat", "Dog"]}, "A cat and a DOG.", True),
    ("keywords:existence", {"keywords": ["cat", "Dog"]}, "A cat alone.", False),
    ("keywords:existence", {"keywords": ["cat"]}, "concatenate", True),  # a regex search, no word boundary
    ("keywords:frequency", {"keyword": "ball", "frequency": 2, "relation": "at least"}, "ball, Ball", True),
    ("keywords:frequency", {"keyword": "ball", "frequency": 2, "relation": "at least"}, "one ball", False),
    ("keywords:frequency", {"keyword": "ball", "frequency": 2, "relation": "at least"}, "balloon ball", True),
    ("keywords:frequency", {"keyword": " ball ", "frequency": 2, "relation": "less than"}, "one ball", True),
    ("keywords:frequency", {"keyword": "ball", "frequency": 2, "relation": "less than"}, "ball ball", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "concatenate the lists", True),  # \b...\b
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, "the Cat sat", False),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"}, "bAnana", True),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"}, "bana", False),
    ("keywords:letter_frequency", {"letter": "A", "let_frequency": 3, "let_relation": "less than"}, "bana", True),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "banana", False),
    ("language:response_language", {"language": "de"}, DE, True),
    ("language:response_language", {"language": "de"}, EN, False),
    ("language:response_language", {"language": "de"}, "12345 67", True),  # undetectable counts as followed
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One sentence.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One. Two.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "One. Two.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Only one here", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\na\n***\nb\n***", True),  # edge dividers
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb\n***\nc", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\n***\nb", False),  # empty middle
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two three", False),
    ("length_constraints:number_words", {"num_words": 2, "relation": "at least"}, "don't", True),  # \w+: 2 words
    ("length_constraints:number_words", {"num_words": 2, "relation": "at least"}, "one", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
     "First.\n\nThen more.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     'First.\n\n"Then," he said.', True),  # leading quote dropped, the word ends at punctuation
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\nAnd then.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\nThen.\n\nThird.", False),  # three paragraphs
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] lives at [address]", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] lives here", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np.s. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nPS see you", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP. P. S. later", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**bold**\n- a\n  * b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b\n* c", False),
    ("detectable_format:constrained_response", {}, "Sure. My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "My answer is yes", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and *b*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and * *", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "**a**", True),  # counted once
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**a**", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nx\nSection 2\ny", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\nx", False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, "{a: 1}", False),
    ("detectable_format:title", {}, "<<My Title>>\ntext", True),
    ("detectable_format:title", {}, "<<  >> and <My Title>", False),
    ("combination:two_responses", {}, "A\n******\nB", True),
    ("combination:two_responses", {}, "A\n******\n A ", False),  # the same response twice
    ("combination:two_responses", {}, "A\n******\n******\nB", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi. "}, "  say hi. Hi!", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi! Say hi.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Text. any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Yes.", False),
    ("startend:quotation", {}, ' "hi" ', True),
    ("startend:quotation", {}, '"', False),
    ("startend:quotation", {}, 'hi"', False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "I am HERE", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "DON'T", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "Hi THERE", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE two", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE TWO", False),
    ("change_case:english_capital", {}, EN_UPPER, True),
    ("change_case:english_capital", {}, EN, False),
    ("change_case:english_capital", {}, DE_UPPER, False),
    ("change_case:english_lowercase", {}, EN_LOWER, True),
    ("change_case:english_lowercase", {}, EN, False),
    ("punctuation:no_comma", {}, "no commas here", True),
    ("punctuation:no_comma", {}, "one, two", False),
]


def test_the_25_registered_instructions():
    assert len(ic.CHECKS) == 25
    assert {c[0] for c in CASES} == set(ic.CHECKS)  # every checker is tested below


@pytest.mark.parametrize("iid,kwargs,response,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_checker_follows_and_breaks(iid, kwargs, response, expected):
    assert ic.check(iid, response, kwargs) is expected


def test_an_empty_response_follows_nothing_and_falsy_kwargs_are_dropped():
    assert not ic.check("punctuation:no_comma", "   ", {})
    falsy = {"num_words": None, "relation": "", "keywords": [], "n": 0}
    assert ic.clean_kwargs({**falsy, "letter": "a"}) == {"letter": "a"}
    # a row as the Hub's parquet gives it: every kwargs key present, most None
    row = {"num_highlights": 2, **{k: None for k in ("relation", "num_words", "keywords", "language")}}
    assert ic.check("detectable_format:number_highlighted_sections", "*a* *b*", row)


@pytest.mark.parametrize("iid,kwargs", [
    ("length_constraints:number_words", {"num_words": 10}),  # no relation: the official code draws one
    ("length_constraints:number_words", {"num_words": 10, "relation": "at most"}),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "x"}),
    ("keywords:nonexistent", {}),
])
def test_missing_or_random_arguments_are_refused(iid, kwargs):
    with pytest.raises(ic.CheckerError):
        ic.check(iid, "some response", kwargs)


def test_strict_and_loose_differ_on_a_markdown_first_line():
    response = '**Answer:**\n"All of it, quoted"'
    assert not ic.check("startend:quotation", response, {})  # strict: the reply starts with '*'
    s = ic.score_prompt(response, ["startend:quotation"], [{}])
    assert s == {"prompt_level_strict_acc": 0, "inst_level_strict_acc": [0],
                 "prompt_level_loose_acc": 1, "inst_level_loose_acc": [1]}
    assert ic.loose_responses("*a*\nb\nc") == ["*a*\nb\nc", "a\nb\nc", "b\nc", "*a*\nb", "b", "b\nc", "a\nb", "b"]


def test_the_four_metrics_on_a_hand_counted_set():
    both = ["punctuation:no_comma", "startend:quotation"]
    scores = [ic.score_prompt('"a b"', both, [{}, {}]),  # strict [1, 1], loose [1, 1]
              ic.score_prompt('Intro line\n"a b"', both, [{}, {}]),  # strict [1, 0], loose [1, 1]
              ic.score_prompt("a, b", ["punctuation:no_comma"], [{}])]  # strict [0], loose [0]
    agg = ic.aggregate(scores)
    assert {m: a["value"] for m, a in agg.items()} == pytest.approx(
        {"prompt_level_strict_acc": 1 / 3, "inst_level_strict_acc": 3 / 5,
         "prompt_level_loose_acc": 2 / 3, "inst_level_loose_acc": 4 / 5})
    assert agg["inst_level_strict_acc"]["n"] == 5 and agg["prompt_level_strict_acc"]["n"] == 3
    assert agg["prompt_level_strict_acc"]["standard_error"] == pytest.approx(((1 / 3) * (2 / 3) / 3) ** 0.5)
    mean, se = ic.prompt_inst_average(scores, "strict")
    assert mean == pytest.approx((1 / 3 + 3 / 5) / 2) and se > 0
    assert ic.prompt_inst_average(scores, "loose")[0] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_counting_rules():
    assert ic.count_words("Hello, world! It's 2024.") == 5  # \w+ tokens: Hello world It s 2024
    assert ic.word_tokens("I DON'T KNOW, CANNOT SAY.")[:4] == ["I", "DO", "N'T", "KNOW"]  # nltk Treebank rules
    if ic.sentence_rule().startswith("punkt-like"):
        assert ic.split_sentences('Mr. Smith left. He said "hi." Then U.S. troops came! Really? yes') == \
            ["Mr. Smith left.", 'He said "hi."', "Then U.S. troops came!", "Really?", "yes"]
    assert ic.count_sentences("") == 0 and ic.count_sentences("one line without a stop") == 1


def test_language_detection_is_seeded_per_call_and_leaves_the_global_factory_alone():
    from langdetect.detector_factory import DetectorFactory

    before = DetectorFactory.seed
    assert {ic.detect_language("ok sure") for _ in range(5)} == {ic.detect_language("ok sure")}
    assert DetectorFactory.seed == before


def test_the_rlvr_verifiers_and_the_official_checkers_are_named_apart():
    """Both can stand for SmolLM2's `extended|ifeval|0|0`: the record says which scored a number."""
    from runner import evaluate, verifiers

    rlvr = evaluate._protocol("ifeval", "ifeval", Path("rows.jsonl"), "0" * 64, 1,
                              "accuracy (verifier release-2024-11)", template="chatml", generation=None,
                              profile="recorded", family="smollm2", published_key="ifeval",
                              extra={"verifier_version": "release-2024-11"})
    assert rlvr["published"]["task"] == "extended|ifeval|0|0" and "checkers" not in rlvr
    assert ic.CHECKERS["name"] == "ifeval-official" and ic.CHECKERS["name"] not in verifiers.VERSIONS
    assert "ea46419" in ic.CHECKERS["source"] and "if_functions" in ic.CHECKERS["not"]
    assert "verifier" not in ic.CHECKERS["name"] and "official" in ic.CHECKERS["kind"]


# ---------------------------------------------------------------- the task, end to end

MIRROR_ROWS = [
    {"key": 1000, "prompt": "Write a short note without commas.", "instruction_id_list": ["punctuation:no_comma"],
     "kwargs": [{}]},
    {"key": 1001, "prompt": "Answer in at least 3 words, and wrap it in double quotes.",
     "instruction_id_list": ["length_constraints:number_words", "startend:quotation"],
     "kwargs": [{"num_words": 3, "relation": "at least"}, {}]},
    {"key": 1002, "prompt": "Give me a title in double angular brackets like <<title>>.",
     "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]},
    {"key": 1003, "prompt": "Highlight 2 sections with markdown.",
     "instruction_id_list": ["detectable_format:number_highlighted_sections"], "kwargs": [{"num_highlights": 2}]},
]


def _mirror(root: Path) -> Path:
    folder = root / "google" / "IFEval"
    folder.mkdir(parents=True)
    # The Hub repository's own file name; its kwargs carry only each instruction's own keys, as there.
    (folder / "ifeval_input_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MIRROR_ROWS))
    return root


@pytest.fixture(scope="module")
def smollm2_miniature(tmp_path_factory):
    """A smollm2-tokenizer causal LM with SmolLM2's ChatML template (random weights)."""
    from runner.data.templates import CHATML_SMOLLM2_JINJA
    from runner.data.tokenizer import build_tokenizer, fixture_corpus
    from runner.models import SMOLLM2_135M, build_model, miniature

    root = tmp_path_factory.mktemp("smollm2-mini")
    tok = build_tokenizer("smollm2", fixture_corpus("smollm2"))
    tok.chat_template = CHATML_SMOLLM2_JINJA
    config, _ = miniature(SMOLLM2_135M, (len(tok) + 7) // 8 * 8, hidden_size=32, initializer_range=0.2,
                          max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    build_model(config, 1).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_the_task_is_registered_with_lightevals_generation_settings():
    from runner.evaltasks import lighteval_tasks as lt
    from runner.evaltasks.run import pick_tasks

    (task,) = pick_tasks("smollm2", "ifeval")
    assert (task.task, task.shots, task.generation_size, task.stop_sequence) == ("extended|ifeval|0|0", 0, 1280, ())
    assert task.metric == lt.IFEVAL_METRIC and task.parts[0].hub_revision is None  # lighteval pins no revision
    doc = task.prompt(MIRROR_ROWS[0])
    assert (doc.query, doc.instruction) == (MIRROR_ROWS[0]["prompt"], "")


def test_repro_eval_ifeval_on_a_mirror_records_the_official_checkers(smollm2_miniature, tmp_path, monkeypatch, cli):
    import dataclasses

    from runner.evaltasks import lighteval_tasks as lt

    # 16 new tokens keep this a pipeline test (a random miniature never stops by itself; 1280 would take
    # minutes on two cores); everything else is the task as registered.
    monkeypatch.setitem(lt.TASKS, "ifeval", dataclasses.replace(lt.TASKS["ifeval"], generation_size=16))
    monkeypatch.setenv("REPRO_HUB_MIRROR", str(_mirror(tmp_path / "mirror")))
    code, out, err = cli("eval", str(smollm2_miniature), "--suite", "published", "--tasks", "ifeval", "--threads",
                         "2", "--json")
    assert code == 0, err
    (m,) = json.loads(out)["metrics"]
    p = m["protocol"]
    assert (m["name"], p["task"], p["shots"], p["metric"]) == ("IFEval", "ifeval", 0, "ifeval_metric")
    assert p["published"] == {"harness": "lighteval", "task": "extended|ifeval|0|0", "shots": 0,
                              "metric": "Average prompt/inst"}
    assert p["implements"]["commit"].startswith("ea46419") and p["implements"]["checkers"]["name"] == "ifeval-official"
    assert p["checkers"]["name"] == "ifeval-official" and "verifier_version" not in p
    assert p["generation"] == {"max_new_tokens": 16, "greedy": True, "stop": ["<eos>"]} and p["chat_template"]
    assert (p["n"], p["n_total"], p["subset"]) == (4, 4, None) and p["data_source"].startswith("mirror ")
    assert set(p["metrics"]) == set(ic.METRICS) | {"prompt_inst_average_strict", "prompt_inst_average_loose"}
    assert m["value"] == pytest.approx(p["metrics"]["prompt_inst_average_strict"])
    (part,) = p["parts"]
    assert part["metrics"]["inst_level_strict_acc"]["n"] == 5 and part["metrics"]["prompt_level_loose_acc"]["n"] == 4
    assert part["revision"] == "unpinned" and len(p["data_sha256"]) == 64 and len(p["fingerprint"]) == 16
    notes = " | ".join(p["deviations"])
    assert "strict or loose" in notes and "langdetect" in notes and "4 rows, google/IFEval has 541" in notes
    assert "plain mirror folder" in notes
    if ic.sentence_rule().startswith("punkt-like"):
        assert "Punkt-like rule" in notes
    # the recorded predictions score to the recorded metrics under the same checkers
    (doc,) = [json.loads(f.read_text()) for f in tmp_path.rglob("eval-published.json")]  # REPRO_RUNS_DIR is in it
    rows = {r["key"]: r for r in MIRROR_ROWS}
    scores = [ic.score_prompt(d["prediction"], rows[d["key"]]["instruction_id_list"], rows[d["key"]]["kwargs"])
              for d in doc["details"]]
    assert 100 * ic.aggregate(scores)["inst_level_loose_acc"]["value"] == pytest.approx(
        p["metrics"]["inst_level_loose_acc"])


def test_without_the_dataset_the_task_is_refused_in_one_line(smollm2_miniature, tmp_path, monkeypatch, cli):
    from runner.evaltasks.ifeval_run import load_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("REPRO_HUB_MIRROR", raising=False)
    with pytest.raises(ReproError) as exc:
        load_rows()
    assert "\n" not in str(exc.value) and "REPRO_HUB_MIRROR=DIR" in str(exc.value)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("REPRO_HUB_MIRROR", str(tmp_path / "empty"))
    code, out, err = cli("eval", str(smollm2_miniature), "--suite", "published", "--tasks", "ifeval")
    assert code == 2 and err.strip().count("\n") == 0
    assert "google/IFEval" in err and "not in the hub mirror" in err and "REPRO_HUB_MIRROR=DIR" in err
