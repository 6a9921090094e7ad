#!/usr/bin/env bash
# The main job on a fresh machine: install repro (CPU torch pinned), then run the Tülu 3 8B miniature chain
# (sft -> dpo -> rm -> rlvr) on the embedded SQLite database, evaluate the final policy and compare it with
# the registry's reference values.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/cpu.txt -e '.[train,eval]'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
for stage in sft dpo rm rlvr; do
  repro run tulu3-8b --stage "$stage" --profile smoke
done
run=$(repro runs --json --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
repro eval "$run" --suite verifiers
repro compare "$run"
repro lineage "$run"
