"""Generation, evaluation suites and the eval / compare / scorecard commands on tiny in-process models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from registry.errors import ReproError

torch = pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RLVR_EVAL = FIXTURES / "tulu3/rlvr-eval.jsonl"
PREFS = FIXTURES / "tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl"
HELDOUT = FIXTURES / "smollm2/pretrain/heldout.jsonl"
# A minimal ChatML template written for these tests (the tulu one comes from runner.data.templates).
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tulu-tokenizer causal LM (policy), a second one (reference), a reward model and a ChatML LM."""
    from runner.data.templates import TULU_JINJA
    from runner.data.tokenizer import build_tokenizer, fixture_corpus
    from runner.models import LLAMA31_8B, SMOLLM2_135M, build_model, build_reward_model, miniature

    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer("tulu", fixture_corpus("tulu"))
    tok.chat_template = TULU_JINJA
    vocab = (len(tok) + 7) // 8 * 8
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    # A wide init makes logits peaky, so greedy argmax is never a float-noise tie.
    config, _ = miniature(LLAMA31_8B, vocab, initializer_range=0.2, **ids)
    out = {}
    for name, seed in (("policy", 1), ("reference", 2)):
        build_model(config, seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    build_reward_model(config, 3).save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    out["rm"] = root / "rm"
    stok = build_tokenizer("smollm2", fixture_corpus("smollm2"))
    stok.chat_template = CHATML
    sconfig, _ = miniature(SMOLLM2_135M, len(stok), initializer_range=0.2, bos_token_id=stok.bos_token_id,
                           eos_token_id=stok.eos_token_id, pad_token_id=stok.pad_token_id)
    build_model(sconfig, 4).save_pretrained(root / "chatml")
    stok.save_pretrained(root / "chatml")
    out["chatml"] = root / "chatml"
    out["tokenizer"] = tok
    return out


def _prompts(tok, n=12):
    rows = [json.loads(line) for line in RLVR_EVAL.read_text().splitlines()[:n]]
    return [tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]


# ---------------------------------------------------------------- generation


def test_batched_generation_equals_unbatched_greedy(models):
    from runner.generation import generate, load_for_generation

    model, tok = load_for_generation(models["policy"]), models["tokenizer"]
    prompts = _prompts(tok)
    batched = generate(model, tok, prompts, max_new_tokens=16, temperature=0.0, seed=0, batch_size=5)
    single = [generate(model, tok, [p], max_new_tokens=16, temperature=0.0, seed=0)[0] for p in prompts]
    assert [c.response_ids for c in batched] == [c.response_ids for c in single]
    assert [c.text for c in batched] == [c.text for c in single]
    # Token-id prompts give the same completions as text prompts.
    as_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert [c.response_ids for c in generate(model, tok, as_ids, max_new_tokens=16, temperature=0.0, seed=0)] == \
        [c.response_ids for c in batched]
    for c in batched:
        assert len(c.response_ids) <= 16
        assert c.finished == (c.response_ids[-1] == tok.eos_token_id)


def test_sampling_is_deterministic_for_a_seed(models):
    from runner.generation import generate, load_for_generation

    model, tok = load_for_generation(models["policy"]), models["tokenizer"]
    prompts = _prompts(tok, 8)
    state = torch.random.get_rng_state()
    a = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    b = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    c = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=8)
    assert [x.response_ids for x in a] == [x.response_ids for x in b]
    assert [x.response_ids for x in a] != [x.response_ids for x in c]
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is untouched


def test_stop_token_ids_end_responses(models):
    from runner.generation import generate, load_for_generation

    model, tok = load_for_generation(models["policy"]), models["tokenizer"]
    prompts = _prompts(tok, 4)
    free = generate(model, tok, prompts, max_new_tokens=10, temperature=0.0, seed=0)
    stop = free[0].response_ids[2]
    cut = generate(model, tok, prompts, max_new_tokens=10, temperature=0.0, seed=0, stop_token_ids=[stop])
    assert cut[0].finished and cut[0].response_ids == free[0].response_ids[:free[0].response_ids.index(stop) + 1]


# ---------------------------------------------------------------- suites


@pytest.mark.slow
def test_verifier_suite_metrics_and_protocols(models):
    from runner.evaluate import run_suite

    result = run_suite("verifiers", models["policy"], max_new_tokens=8)
    by = {m.name: m for m in result.metrics}
    assert set(by) == {"GSM8K", "MATH", "IFEval"}
    assert sum(m.protocol["n"] for m in result.metrics) == 64
    p = by["GSM8K"].protocol
    assert p["harness"] == "repro" and p["task"] == "gsm8k" and p["shots"] == 0 and p["chat_template"] == "tulu"
    assert p["generation"] == {"temperature": 0.0, "max_new_tokens": 8}
    assert p["data_sha256"] and p["data_path"].endswith("verifiers-eval.jsonl")
    assert p["verifier_version"] == "release-2024-11" and "published" not in p
    for m in result.metrics:
        assert 0.0 <= m.value <= 100.0
    assert len(result.details) == 64 and {"response", "score"} <= set(result.details[0])


def test_recorded_profile_names_the_published_protocol(models):
    from runner.evaluate import run_suite

    result = run_suite("gsm8k", models["policy"], data=RLVR_EVAL, profile="recorded", max_new_tokens=4, limit=10)
    (m,) = result.metrics
    assert m.protocol["published"] == {"harness": "OLMES", "task": "gsm8k::tulu", "shots": 8, "cot": True}
    assert m.protocol["dataset"]["hub_id"] == "openai/gsm8k"
    smol = run_suite("ifeval", models["chatml"], data=RLVR_EVAL, profile="recorded", max_new_tokens=4)
    assert smol.metrics[0].protocol["published"]["task"] == "extended|ifeval|0|0"
    assert smol.metrics[0].protocol["chat_template"].startswith("custom:")
    with pytest.raises(ReproError, match="--data"):
        run_suite("gsm8k", models["policy"], profile="recorded")


def test_preference_reward_model(models):
    from runner.evaluate import run_suite

    result = run_suite("preference", models["rm"], data=PREFS, batch_size=32)
    (m,) = result.metrics
    assert m.name == "preference accuracy" and 0 <= m.value <= 100 and m.protocol["n"] == 100
    assert m.value == pytest.approx(100 * sum(d["chosen"] > d["rejected"] for d in result.details) / 100)


def test_preference_dpo_needs_a_reference(models):
    from runner.evaluate import run_suite

    with pytest.raises(ReproError, match="needs a reference model"):
        run_suite("preference", models["policy"], data=PREFS)
    result = run_suite("preference", models["policy"], data=PREFS, reference_dir=models["reference"], limit=20)
    (m,) = result.metrics
    assert m.name == "DPO eval rewards/accuracies" and 0 <= m.value <= 1 and m.protocol["scale"] == 1.0
    # The policy as its own reference: every implicit reward is 0, ties count wrong -> accuracy 0.
    same = run_suite("preference", models["policy"], data=PREFS, reference_dir=models["policy"], limit=20)
    assert same.metrics[0].value == 0.0


def test_preference_needs_pairs(models):
    from runner.evaluate import run_suite

    with pytest.raises(ReproError, match="no chosen/rejected"):
        run_suite("preference", models["rm"], data=RLVR_EVAL)


def test_heldout_loss_and_perplexity(models):
    from runner.evaluate import run_suite

    result = run_suite("heldout", models["policy"], data=HELDOUT, limit=20)
    by = {m.name: m.value for m in result.metrics}
    assert by["heldout loss"] > 0 and by["heldout perplexity"] == pytest.approx(math.exp(by["heldout loss"]))
    msgs = run_suite("heldout", models["policy"], data=FIXTURES / "tulu3/tulu-3-sft-mixture.jsonl", limit=10)
    assert msgs.metrics[0].protocol["chat_template"] == "tulu"
    with pytest.raises(ReproError, match="reward model"):
        run_suite("heldout", models["rm"], data=HELDOUT)


def test_not_a_model_directory(tmp_path):
    from runner.evaluate import check_model_dir

    with pytest.raises(ReproError, match="is not a model directory \\(no config.json\\)"):
        check_model_dir(tmp_path)


# ---------------------------------------------------------------- commands


@pytest.fixture
def run_cli(cli, db_url):
    """The whole `repro` app (eval, compare and plot are registered there), on this test's database."""
    return cli


def _make_run(tmp_path, models, run_id="tulu3-8b-rlvr-test-0001", profile="smoke", with_checkpoint=True):
    from registry.db import session_scope
    from registry.models import RunRow
    from registry.queries import add_run

    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    if with_checkpoint:
        shutil.copytree(models["policy"], run_dir / "checkpoint")
    with session_scope() as session:
        add_run(session, RunRow(id=run_id, recipe="tulu3-8b", stage="rlvr", profile=profile, status="succeeded",
                                run_dir=str(run_dir), plan={"family": "tulu3", "chat_template": "tulu",
                                                            "hyperparameters": {"seed": 1}},
                                deviations=[], final_metrics={}), [])
    return run_id


def test_cli_eval_a_path_creates_an_eval_run(run_cli, models):
    from registry.db import session_scope
    from registry.models import LineageEdgeRow, RunRow
    from registry.queries import run_metrics

    code, out, err = run_cli("eval", str(models["policy"]), "--suite", "gsm8k", "--max-new-tokens", "4",
                             "--limit", "6", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["recorded_in"] == "new eval run" and doc["metrics"][0]["name"] == "GSM8K"
    with session_scope() as session:
        run = session.get(RunRow, doc["run"])
        assert (run.stage, run.profile, run.status) == ("eval", "eval", "succeeded")
        rows = run_metrics(session, run.id, kind="eval")
        assert [r.name for r in rows] == ["GSM8K"] and rows[0].protocol["task"] == "gsm8k"
        edges = {(e.parent, e.relation) for e in session.query(LineageEdgeRow).filter_by(child=f"run:{run.id}")}
    assert (f"checkpoint:{models['policy'].resolve()}", "evaluated") in edges
    assert any(p.startswith("dataset:verifiers-eval.jsonl@md5:") and r == "eval" for p, r in edges)
    assert (Path(run.run_dir) / "eval-gsm8k.json").exists()


def test_cli_eval_non_model_path_is_one_line_exit_2(run_cli, tmp_path):
    (tmp_path / "notamodel").mkdir()
    code, out, err = run_cli("eval", str(tmp_path / "notamodel"), "--suite", "gsm8k")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "is not a model directory (no config.json)" in err
    code, _, err = run_cli("eval", "no-such-run-or-checkpoint", "--suite", "gsm8k")
    assert code == 2 and "unknown eval target" in err
    code, _, err = run_cli("eval", "allenai/Llama-3.1-Tulu-3-8B", "--suite", "gsm8k")
    assert code == 2 and "no local copy" in err


def test_cli_eval_run_target_replaces_metrics_and_compare(run_cli, models, tmp_path, monkeypatch):
    from registry.db import session_scope
    from registry.queries import run_input_hashes, run_metrics

    run_id = _make_run(tmp_path, models)
    code, _, err = run_cli("compare", run_id)  # nothing evaluated yet
    assert code == 2 and "no metrics" in err
    for _ in range(2):
        code, out, err = run_cli("eval", run_id, "--suite", "verifiers", "--max-new-tokens", "4", "--json")
        assert code == 0, err
    doc = json.loads(out)
    assert doc["run"] == run_id and doc["recorded_in"] == "run"
    with session_scope() as session:
        names = sorted(r.name for r in run_metrics(session, run_id, kind="eval"))
        assert names == ["GSM8K", "IFEval", "MATH"]  # the second eval replaced the first
        assert any(e.relation == "eval" for e in run_input_hashes(session, run_id))
    values = {m["name"]: m for m in doc["metrics"]}

    # Smoke references (a regression check): GSM8K at the same value is unchanged; MATH far off changed.
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"tulu3-8b:rlvr": {
        "GSM8K": {"value": values["GSM8K"]["value"], "tolerance": 5.0, "protocol": values["GSM8K"]["protocol"]},
        "MATH": {"value": values["MATH"]["value"] + 60.0, "tolerance": 5.0, "protocol": values["MATH"]["protocol"]},
    }}))
    monkeypatch.setenv("REPRO_SMOKE_REFERENCES", str(refs))
    code, out, err = run_cli("compare", run_id, "--json")
    assert code == 1 and "outside tolerance" in err
    cmp = json.loads(out)
    verdicts = {m["name"]: m["verdict"] for m in cmp["metrics"]}
    assert verdicts == {"GSM8K": "unchanged", "MATH": "changed"}
    assert cmp["no_counterpart"] == ["IFEval"]
    refs.write_text(json.dumps({"tulu3-8b:rlvr": {
        "GSM8K": {"value": values["GSM8K"]["value"], "protocol": {**values["GSM8K"]["protocol"], "shots": 3}}}}))
    code, out, _ = run_cli("compare", run_id, "--json")
    assert code == 0
    (gsm,) = json.loads(out)["metrics"]
    assert gsm["verdict"] == "not comparable" and "shots" in gsm["reason"]

    # Against the published 8B card: a smoke protocol is not the OLMES protocol -> not comparable.
    code, out, _ = run_cli("compare", run_id, "--against", "allenai/Llama-3.1-Tulu-3-8B", "--json")
    assert code == 0
    pub = {m["name"]: m for m in json.loads(out)["metrics"]}
    assert pub["GSM8K"]["verdict"] == "not comparable" and "harness" in pub["GSM8K"]["reason"]

    png = tmp_path / "card.png"
    code, out, err = run_cli("plot", "scorecard", run_id, "--against", "allenai/Llama-3.1-Tulu-3-8B",
                             "--output", str(png))
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_preference_on_a_base_lm_is_refused(run_cli, models):
    code, out, err = run_cli("eval", str(models["policy"]), "--suite", "preference", "--data", str(PREFS))
    assert code == 2 and "needs a reference model" in err and out == ""
    code, _, err = run_cli("eval", str(models["rm"]), "--suite", "preference", "--data", str(RLVR_EVAL))
    assert code == 2 and "no chosen/rejected" in err


def test_published_protocol_table_matches_the_registry():
    """Every recorded-profile claim is comparable with the card value it stands for (8B Tülu 3, SmolLM2-1.7B-
    Instruct) and not with the 405B table."""
    from registry.recipes import load_recipes
    from runner.compare import comparability
    from runner.evaluate import PUBLISHED_PROTOCOLS, VERIFIER_TASKS

    ckpts = load_recipes().model.checkpoints
    names = {**VERIFIER_TASKS, "dpo": "DPO eval rewards/accuracies"}
    for (family, key), entry in PUBLISHED_PROTOCOLS.items():
        claim = {"published": entry["protocol"]}
        card = "allenai/Llama-3.1-Tulu-3-8B" if family == "tulu3" else "HuggingFaceTB/SmolLM2-1.7B-Instruct"
        row = next(m for m in ckpts[card].metrics if m.benchmark == names[key])
        assert comparability(claim, row.protocol.model_dump(), "published") is None, (family, key)
        if family == "tulu3":
            big = next(m for m in ckpts["allenai/Llama-3.1-Tulu-3-405B"].metrics if m.benchmark == names[key])
            assert comparability(claim, big.protocol.model_dump(), "published") is not None
