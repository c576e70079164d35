#!/usr/bin/env bash
# Set up every environment (scripts/setup.sh --vllm --quant) and a Chromium for the report page's
# browser test, then run every check CI runs: ruff's
# lint and format check, mypy over src/, the main tests (.venv), the vLLM engine's (.venv-vllm) and
# quantize's (.venv-quant). Any failure stops it with a non-zero status, pytest's "no tests ran" (5) too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm --quant
# The report page's browser test needs a Chromium: from the system packages where we may install them.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "test.sh: installing Chromium (apt-get) for the report page's browser test" >&2
  { [ "$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
    echo "test.sh: could not install Chromium; tests/test_page.py's browser test will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest
.venv-vllm/bin/python -m pytest tests_vllm
.venv-quant/bin/python -m pytest tests_quant
