"""`repro run --emit-script`: a runnable bash script of the recorded upstream command, rescaled by the planner.

The script must parse (`bash -n`), check out the recorded pin, and run the recorded command with exactly the
recorded arguments except the layout flags the planner changed, which carry the planned values.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from runner.emit_script import ACCELERATE_FLAGS, SCRIPT_FLAGS, recorded_tokens

MULTI_NODE = {"--machine_rank", "--main_process_ip", "--main_process_port"}


def _segments(tokens: list[str]) -> tuple[dict[str, list[str]], list[str], dict[str, list[str]]]:
    """(launcher flags, positionals, script flags) of an argv, flags mapped to their values."""
    script = next(i for i, t in enumerate(tokens) if t.endswith(".py"))

    def flags(part: list[str]) -> tuple[dict[str, list[str]], list[str]]:
        out: dict[str, list[str]] = {}
        positional: list[str] = []
        key = None
        for tok in part:
            if tok.startswith("--"):
                key, _, value = tok.partition("=")
                out[key] = [value] if value else []
                if value:
                    key = None
            elif key is not None:
                out[key].append(tok)
            else:
                positional.append(tok)
        return out, positional

    launcher, head = flags(tokens[:script])
    after, rest = flags(tokens[script + 1:])
    return launcher, [*head, tokens[script], *rest], after


def _emitted_command(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return shlex.split(lines[lines.index("# --- the recorded command ---") + 1])


CASES = [("tulu3-8b", "sft", 8), ("tulu3-8b", "dpo", 16), ("tulu3-8b", "rm", 16), ("tulu3-8b", "rlvr", 16),
         ("tulu3-70b", "sft", 32), ("smollm2-135m", "dpo", 4), ("smollm2-1.7b", "sft", 16), ("tulu3-8b", "sft", None)]


@pytest.mark.parametrize("recipe, stage, gpus", CASES, ids=[f"{r}-{s}-{g}" for r, s, g in CASES])
def test_script_runs_the_recorded_command_with_only_the_planned_layout_changed(cli, tmp_path, recipe, stage, gpus):
    path = tmp_path / "run.sh"
    argv = ["run", recipe, "--stage", stage, "--emit-script", str(path)] + (["--gpus", str(gpus)] if gpus else [])
    code, _, err = cli(*argv)
    assert code == 0, err
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    code, out, _ = cli("show", recipe, "--stage", stage, "--json")
    doc = json.loads(out)
    assert f"git checkout --quiet {doc['code']['commit']}" in text and doc["code"]["repository"] in text

    recorded = _segments(recorded_tokens(doc["command"]["text"]))
    emitted = _segments(_emitted_command(path))
    planned: dict[str, object] = {}
    if gpus:
        code, out, _ = cli("plan", recipe, "--stage", stage, "--gpus", str(gpus), "--json")
        plan = json.loads(out)
        planned = {c["key"]: plan["layout"][c["key"]] for c in plan["changes"]}
        if "actor_gpus" in planned:
            planned["actor_gpus_per_node"] = plan["layout"]["actor_gpus_per_node"]
    native = {**ACCELERATE_FLAGS, **{k: v for table in SCRIPT_FLAGS.values() for k, v in table.items()},
              "actor_gpus_per_node": "--actor_num_gpus_per_node", "vllm_engines": "--vllm_num_engines",
              "local_rollout_batch_size": "--local_rollout_batch_size",
              "local_mini_batch_size": "--local_mini_batch_size"}
    changed = {native[k]: v for k, v in planned.items() if k in native}
    assert emitted[1] == recorded[1]  # the script and its positional arguments, verbatim
    for got, want in ((emitted[0], recorded[0]), (emitted[2], recorded[2])):
        for flag in set(got) | set(want):
            if flag in changed:
                value = changed[flag]
                assert got[flag] == ([str(v) for v in value] if isinstance(value, list) else [str(value)]), flag
            elif flag in MULTI_NODE:
                assert flag not in want
            else:
                assert got.get(flag) == want.get(flag), flag


@pytest.mark.parametrize("argv, fragment", [
    (["run", "smollm2-135m", "--stage", "pretrain"], "has no published launch command"),
    (["run", "tulu3-405b", "--stage", "sft"], "has no published launch command"),
    (["run", "tulu3-8b", "--stage", "sft", "--gpus", "3"], "no layout on 3 GPUs keeps"),
])
def test_what_has_no_upstream_route_is_refused(cli, tmp_path, argv, fragment):
    folder = tmp_path / "scripts"
    folder.mkdir()
    code, _, err = cli(*argv, "--emit-script", str(folder / "run.sh"))
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert list(folder.iterdir()) == []


def test_an_existing_file_is_never_overwritten(cli, tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    path = folder / "mine.sh"
    path.write_text("echo mine\n")
    code, _, err = cli("run", "tulu3-8b", "--stage", "sft", "--emit-script", str(path))
    assert code == 2 and "exists" in err
    assert path.read_text() == "echo mine\n" and [p.name for p in folder.iterdir()] == ["mine.sh"]


def test_gpus_without_emit_script_is_refused(cli):
    code, _, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--gpus", "8")
    assert code == 2 and "--gpus and --nodes apply to the recorded profile and --emit-script" in err


def test_multi_node_script_asks_for_rank_and_address(cli, tmp_path):
    path = tmp_path / "run.sh"
    code, _, err = cli("run", "tulu3-8b", "--stage", "rm", "--emit-script", str(path), "--gpus", "16")
    assert code == 0, err
    text = path.read_text()
    assert ': "${MACHINE_RANK:?' in text and '--machine_rank "$MACHINE_RANK"' in text
