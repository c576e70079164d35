#!/usr/bin/env bash
# The three lm_eval runs recorded in results/issue2 (embedded SmolLM2-135M, CPU, full passkey_1k and city_facts).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for variant in none massive nonmassive; do
  .venv/bin/lm_eval --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks passkey_1k,city_facts --batch_size 4 --device cpu \
    --output_path "results/issue2/${variant}" --log_samples
done
