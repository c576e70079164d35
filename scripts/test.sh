#!/usr/bin/env bash
# Set up every environment (scripts/setup.sh --vllm --quant), then run every check CI runs: ruff's
# lint and format check, mypy over src/, the main tests (.venv), the vLLM engine's (.venv-vllm) and
# quantize's (.venv-quant). Any failure stops it with a non-zero status, pytest's "no tests ran" (5) too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm --quant
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest
.venv-vllm/bin/python -m pytest tests_vllm
.venv-quant/bin/python -m pytest tests_quant
