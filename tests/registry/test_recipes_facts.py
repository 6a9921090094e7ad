"""Key facts of recipes.json, checked against the facts digests (shared/facts/*.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.schema import RecipesFile

ROOT = Path(__file__).resolve().parents[2]
RAW = json.loads((ROOT / "recipes.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rf() -> RecipesFile:
    return RecipesFile.model_validate(RAW)


def hp(rf: RecipesFile, recipe: str, stage: str, key: str):
    st = rf.recipes[recipe].stage(stage)
    assert st is not None, f"{recipe}:{stage} missing"
    assert key in st.hyperparameters, f"{recipe}:{stage} lacks {key}"
    return st.hyperparameters[key]


def test_canonical_formatting() -> None:
    assert (ROOT / "recipes.json").read_text(encoding="utf-8") == json.dumps(RAW, indent=2, ensure_ascii=False) + "\n"
    assert list(RAW)[:2] == ["$schema", "format_version"]
    assert list(RAW)[2:] == ["sources", "datasets", "checkpoints", "recipes"]


def test_recipes_and_stage_order(rf: RecipesFile) -> None:
    assert set(rf.recipes) == {"tulu3-8b", "tulu3-70b", "tulu3-405b", "smollm2-135m", "smollm2-360m", "smollm2-1.7b"}
    assert rf.recipes["tulu3-8b"].stage_names == ["sft", "dpo", "rm", "rlvr"]
    assert rf.recipes["tulu3-70b"].stage_names == ["sft", "dpo", "rlvr"]
    assert rf.recipes["tulu3-405b"].stage_names == ["sft", "dpo", "rlvr"]
    for name in ("smollm2-135m", "smollm2-360m", "smollm2-1.7b"):
        assert rf.recipes[name].stage_names == ["pretrain", "sft", "dpo"]


def test_tulu_8b_sft(rf: RecipesFile) -> None:
    assert hp(rf, "tulu3-8b", "sft", "learning_rate").value == 5e-6
    pd = hp(rf, "tulu3-8b", "sft", "per_device_batch_size").value
    ga = hp(rf, "tulu3-8b", "sft", "gradient_accumulation_steps").value
    n = hp(rf, "tulu3-8b", "sft", "num_processes").value
    assert (n, pd, ga) == (64, 1, 2)
    assert hp(rf, "tulu3-8b", "sft", "effective_batch_size").value == 128 == n * pd * ga
    assert hp(rf, "tulu3-8b", "sft", "loss_reduction").value == "sum"
    seed = hp(rf, "tulu3-8b", "sft", "seed")
    assert seed.value == 123 and any(a.value == 8 and a.source.startswith("tulu3-SCRIPTS25") for a in seed.alternatives)
    assert rf.recipes["tulu3-8b"].stage("sft").native_flags["reduce_loss"] == "sum"


def test_tulu_70b_sft(rf: RecipesFile) -> None:
    assert hp(rf, "tulu3-70b", "sft", "learning_rate").value == 2e-6
    assert hp(rf, "tulu3-70b", "sft", "seed").value == 456
    assert hp(rf, "tulu3-70b", "sft", "gradient_checkpointing").value is True
    assert hp(rf, "tulu3-8b", "sft", "gradient_checkpointing").value is False


def test_sft_one_node_ga_doc_bug_recorded(rf: RecipesFile) -> None:
    st = rf.recipes["tulu3-8b"].stage("sft")
    assert any(n.kind == "doc-bug" and "64" in n.text and n.source.startswith("tulu3-DOC-v1") for n in st.notes)
    assert "16" in (st.layout.note or "")


def test_tulu_dpo(rf: RecipesFile) -> None:
    assert hp(rf, "tulu3-8b", "dpo", "dpo_loss_type").value == "dpo_norm"
    assert hp(rf, "tulu3-8b", "dpo", "dpo_beta").value == 5
    assert hp(rf, "tulu3-8b", "dpo", "effective_batch_size").value == 128
    assert any(a.value == 512 for a in hp(rf, "tulu3-8b", "dpo", "effective_batch_size").alternatives)
    assert hp(rf, "tulu3-405b", "dpo", "effective_batch_size").value == 256
    assert rf.recipes["tulu3-70b"].stage("dpo").layout.offload is True
    # 70B mixer weight missing in the doc: recorded as null plus a doc-bug note.
    st70 = rf.recipes["tulu3-70b"].stage("dpo")
    assert st70.datasets[0].weight is None
    assert any(n.kind == "doc-bug" and '"1.0"' in n.text for n in st70.notes)
    # 405B DPO tokenizer is the 70B SFT model.
    st405 = rf.recipes["tulu3-405b"].stage("dpo")
    assert {r.role: r.checkpoint for r in st405.inputs}["tokenizer"] == "allenai/Llama-3.1-Tulu-3-70B-SFT"


def test_tulu_rm(rf: RecipesFile) -> None:
    assert hp(rf, "tulu3-8b", "rm", "adam_epsilon").value == 1e-5
    assert hp(rf, "tulu3-8b", "rm", "weight_decay").value == 0.01
    assert hp(rf, "tulu3-8b", "rm", "effective_batch_size").value == 256
    st = rf.recipes["tulu3-8b"].stage("rm")
    train = [u for u in st.datasets if u.role == "train"]
    public = [u for u in train if u.dataset == "allenai/llama-3.1-tulu-3-8b-preference-mixture"]
    assert len(public) == 1 and public[0].used_by_release is False
    internal = [u for u in train if u.used_by_release]
    assert len(internal) == 6
    assert all(not rf.datasets[u.dataset].published for u in internal)
    assert not any("personahub" in u.dataset for u in internal)


@pytest.mark.parametrize("recipe,batch,actors,local", [("tulu3-8b", 224, 7, 32), ("tulu3-70b", 640, 40, 16),
                                                        ("tulu3-405b", 1856, 232, 8)])
def test_rlvr_rollout_batch(rf: RecipesFile, recipe: str, batch: int, actors: int, local: int) -> None:
    st = rf.recipes[recipe].stage("rlvr")
    assert hp(rf, recipe, "rlvr", "effective_batch_size").value == batch
    assert st.layout.actor_gpus == actors == sum(st.layout.actor_gpus_per_node)
    assert st.layout.local_rollout_batch_size == local
    assert local * actors == batch
    assert st.verifier_version == "release-2024-11"
    roles = {r.role: r.checkpoint for r in st.inputs}
    assert roles["reward_model"] == roles["value_model"] == "allenai/Llama-3.1-Tulu-3-8B-RM"


def test_rlvr_conflicts(rf: RecipesFile) -> None:
    ep8 = hp(rf, "tulu3-8b", "rlvr", "total_episodes")
    assert ep8.value == 10_000_000 and any(a.value == 100_000 for a in ep8.alternatives)
    resp = hp(rf, "tulu3-405b", "rlvr", "response_length")
    assert resp.value == 1024 and [a.value for a in resp.alternatives] == [2048] and resp.release_value_known is False
    ep405 = hp(rf, "tulu3-405b", "rlvr", "total_episodes")
    assert ep405.value == 400_000 and [a.value for a in ep405.alternatives] == [300_000]
    assert ep405.release_value_known is False
    procs = hp(rf, "tulu3-405b", "rlvr", "num_processes")
    assert procs.value == 232
    assert any(a.value == 240 and a.source.startswith("tulu3-BLOG-405B") for a in procs.alternatives)
    init = {r.role: r.checkpoint for r in rf.recipes["tulu3-405b"].stage("rlvr").inputs}["init"]
    assert rf.checkpoints[init].published is False and rf.checkpoints[init].kind == "intermediate"


def test_405b_sft_unpublished(rf: RecipesFile) -> None:
    st = rf.recipes["tulu3-405b"].stage("sft")
    assert st.hyperparameters == {}
    assert st.command is None
    assert any(n.kind == "unpublished" for n in st.notes)
    assert [o.checkpoint for o in st.outputs] == ["allenai/Llama-3.1-Tulu-3-405B-SFT"]


@pytest.mark.parametrize("recipe,frac,steps,start,decay", [("smollm2-135m", 0.2, 2_000_000, 1_600_000, 400_000),
                                                         ("smollm2-360m", 0.2, 2_600_000, 2_080_000, 520_000),
                                                         ("smollm2-1.7b", 0.1, 5_240_000, 4_716_000, 524_000)])
def test_smollm2_wsd(rf: RecipesFile, recipe: str, frac: float, steps: int, start: int, decay: int) -> None:
    assert hp(rf, recipe, "pretrain", "lr_scheduler").value == "wsd"
    assert hp(rf, recipe, "pretrain", "decay_fraction").value == frac
    assert hp(rf, recipe, "pretrain", "decay_style").value == "linear"
    assert hp(rf, recipe, "pretrain", "warmup_steps").value == 2000
    assert hp(rf, recipe, "pretrain", "min_learning_rate").value == 0
    assert hp(rf, recipe, "pretrain", "train_steps").value == steps
    assert hp(rf, recipe, "pretrain", "decay_start_step").value == start
    assert hp(rf, recipe, "pretrain", "decay_steps").value == decay
    assert start + decay == steps
    assert decay / steps == pytest.approx(frac)
    b2 = hp(rf, recipe, "pretrain", "adam_beta2")
    assert b2.value == 0.95 and any(a.value == 0.999 and a.source == "seed-review" for a in b2.alternatives)
    tokens = hp(rf, recipe, "pretrain", "batch_tokens").value
    assert tokens == hp(rf, recipe, "pretrain", "effective_batch_size").value * 2048
    assert hp(rf, recipe, "pretrain", "train_tokens").value == steps * tokens


def test_smollm2_1_7b_phases(rf: RecipesFile) -> None:
    phases = rf.recipes["smollm2-1.7b"].stage("pretrain").phases
    assert [p.start_tokens for p in phases] == [0, 6 * 10**12, 8 * 10**12, 10 * 10**12]
    assert phases[-1].end_tokens == 11 * 10**12 and phases[-1].lr_phase == "decay"
    for p in phases:
        assert sum(p.mixture.values()) == pytest.approx(1.0)


def test_smollm2_dpo_epochs(rf: RecipesFile) -> None:
    ep = hp(rf, "smollm2-1.7b", "dpo", "epochs")
    assert ep.value == 3 and [a.value for a in ep.alternatives] == [2]
    assert ep.alternatives[0].source.startswith("smollm2-PAPER")
    assert hp(rf, "smollm2-135m", "dpo", "epochs").value == 2
    assert hp(rf, "smollm2-1.7b", "dpo", "dpo_beta").value == 0.5


def test_smollm2_sft(rf: RecipesFile) -> None:
    sched = hp(rf, "smollm2-1.7b", "sft", "lr_scheduler")
    assert sched.value == "cosine" and any(a.value == "wsd" and a.source == "seed-review" for a in sched.alternatives)
    assert hp(rf, "smollm2-1.7b", "sft", "learning_rate").value == 3e-4
    small = hp(rf, "smollm2-135m", "sft", "learning_rate")
    assert small.value == 1e-3 and any(a.value == 3e-4 for a in small.alternatives)
    assert hp(rf, "smollm2-1.7b", "sft", "packing").value is True


def test_metrics(rf: RecipesFile) -> None:
    final8 = {m.benchmark: m for m in rf.checkpoints["allenai/Llama-3.1-Tulu-3-8B"].metrics}
    assert len(final8) == 13
    assert final8["Avg."].value == 64.8 and [a.value for a in final8["Avg."].alternatives] == [65.1]
    assert final8["GSM8K"].protocol.task == "gsm8k::tulu"
    for key in ("allenai/Llama-3.1-Tulu-3-8B-SFT", "allenai/Llama-3.1-Tulu-3-8B-DPO",
                "allenai/Llama-3.1-Tulu-3-70B-SFT", "allenai/Llama-3.1-Tulu-3-70B-DPO", "allenai/Llama-3.1-Tulu-3-70B"):
        assert len(rf.checkpoints[key].metrics) == 13
    # 405B metrics use their own protocol: no benchmark shares a protocol with the 8B table.
    p8 = {(m.benchmark, m.protocol.model_dump_json()) for m in final8.values()}
    for m in rf.checkpoints["allenai/Llama-3.1-Tulu-3-405B"].metrics:
        assert (m.benchmark, m.protocol.model_dump_json()) not in p8
    inst = {m.benchmark: m for m in rf.checkpoints["HuggingFaceTB/SmolLM2-1.7B-Instruct"].metrics}
    assert inst["GSM8K"].value == 48.2 and [a.value for a in inst["GSM8K"].alternatives] == [48.8]
    assert inst["DPO eval loss"].value == 0.5878


def test_every_source_tag_resolves(rf: RecipesFile) -> None:
    tags: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "source" and isinstance(v, str):
                    tags.append(v.split(" ", 1)[0])
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(RAW["datasets"])
    walk(RAW["checkpoints"])
    walk(RAW["recipes"])
    assert tags
    missing = sorted({t for t in tags if t not in rf.sources})
    assert not missing, missing


def test_every_reference_resolves(rf: RecipesFile) -> None:
    for rname, recipe in rf.recipes.items():
        assert recipe.base_model in rf.checkpoints, rname
        for st in recipe.stages:
            for use in st.datasets:
                assert use.dataset in rf.datasets, (rname, st.name, use.dataset)
            for ref in st.inputs:
                assert ref.checkpoint in rf.checkpoints, (rname, st.name, ref.checkpoint)
            for out in st.outputs:
                assert out.checkpoint in rf.checkpoints, (rname, st.name, out.checkpoint)
                produced = rf.checkpoints[out.checkpoint].produced_by
                assert produced in (None, f"{rname}:{st.name}")
    for name, ckpt in rf.checkpoints.items():
        if ckpt.produced_by:
            r, _, s = ckpt.produced_by.partition(":")
            assert rf.recipes[r].stage(s) is not None, name


def _cited_hashes() -> list[str]:
    # Sources outside the two digests (e.g. the Llama 3.1 architecture table) carry their own commit.
    digest_sources = [s for tag, s in RAW["sources"].items() if tag.startswith(("tulu3-", "smollm2-", "semantics"))]
    hashes = [s.get("commit") for s in digest_sources] + [d.get("revision") for d in RAW["datasets"].values()]
    hashes += [st["code"]["commit"] for r in RAW["recipes"].values() for st in r["stages"]]
    return sorted(set(filter(None, hashes)))


FACT_HASHES = json.loads((ROOT / "tests" / "data" / "facts_hashes.json").read_text(encoding="utf-8"))["hashes"]


def test_no_invented_hashes() -> None:
    """Every commit/revision in recipes.json is one that a facts digest states (tests/data/facts_hashes.json
    names the digest line for each, so this holds on a clean clone without shared/)."""
    unknown = [h for h in _cited_hashes() if h not in FACT_HASHES]
    assert not unknown, f"recipes.json cites hashes no facts digest states: {unknown}"


def test_fact_hashes_match_the_digests() -> None:
    """The in-repo list cannot drift from the digests: each hash is on the line it names."""
    facts = ROOT.parent / "shared" / "facts"
    if not facts.exists():
        pytest.skip("shared/facts is not beside this clone; test_no_invented_hashes still checks the in-repo list")
    for commit, where in FACT_HASHES.items():
        name, _, line = where.partition(":")
        text = (facts / name).read_text(encoding="utf-8").splitlines()[int(line) - 1]
        assert commit in text, (commit, where)


def test_loads_with_cross_reference_checks() -> None:
    from registry.recipes import load_recipes

    load_recipes(ROOT / "recipes.json")
