#!/usr/bin/env bash
# Remakes results/controls: the embedded SmolLM2-135M on CPU, full passkey_1k and city_facts, baseline /
# ablate=massive / ablate=nonmassive, then the non-massive control on passkey_1k with two more random
# seeds and the smallest-norm control.   Usage: bash results/controls/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for variant in none massive nonmassive; do
  .venv/bin/lm_eval --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks passkey_1k,city_facts --batch_size 4 --device cpu \
    --output_path "results/controls/${variant}" --log_samples
done
for extra in seed=1 seed=2 control=smallest; do
  .venv/bin/lm_eval --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=nonmassive,${extra}" \
    --tasks passkey_1k --batch_size 4 --device cpu \
    --output_path "results/controls/nonmassive_${extra/=/_}" --log_samples
done
