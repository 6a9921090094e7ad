#!/usr/bin/env bash
# The test suite on a fresh machine: install repro with every extra the tests use (CPU torch pinned), lint, then
# pytest (`bash scripts/test.sh -m "not slow"` for the quick tier).
# Database tests also run on PostgreSQL when REPRO_TEST_POSTGRES_URL names a server (.ci/run starts one).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/cpu.txt -e '.[train,eval,deepspeed,ray,pipeline,postgres,dev]'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .  # the lint gate: pyproject.toml [tool.ruff]
exec .venv/bin/python -m pytest -q "$@"
