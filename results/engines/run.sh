#!/usr/bin/env bash
# Remakes results/engines: the issue-11 acceptance command on both engines, from the environments
# `bash scripts/setup.sh --vllm` builds (CPU, embedded SmolLM2-135M in float32, lm-eval's default
# batch size 1), then the paired reports: each engine against its own baseline, and the vLLM
# engine's massive run against the HF engine's.   Usage: bash results/engines/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for variant in none massive; do
  .venv-vllm/bin/lm_eval --model qk_ablated_vllm --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks passkey_1k,city_facts --limit 30 --output_path "results/engines/runs/vllm_${variant}" --log_samples
  .venv/bin/lm_eval --model qk_ablated --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks passkey_1k,city_facts --limit 30 --output_path "results/engines/runs/hf_${variant}" --log_samples
done
runs=results/engines/runs
.venv/bin/qk-ablate report $runs/hf_none $runs/hf_massive $runs/vllm_none $runs/vllm_massive --out results/engines/report
.venv/bin/qk-ablate report $runs/vllm_massive --baseline $runs/hf_massive --out results/engines/vllm_vs_hf
