#!/usr/bin/env bash
# The non-massive control examined further on passkey_1k (recorded in results/issue2):
# two more random seeds, and the smallest-norm control.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for extra in seed=1 seed=2 control=smallest; do
  .venv/bin/lm_eval --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=nonmassive,${extra}" \
    --tasks passkey_1k --batch_size 4 --device cpu \
    --output_path "results/issue2/nonmassive_${extra/=/_}" --log_samples
done
