#!/usr/bin/env bash
# The lm_eval runs recorded in results/issue3: the embedded SmolLM2-135M on CPU, SPEC defaults,
# baseline / ablate=massive / ablate=nonmassive, every task at its full size (>= 100 documents).
# Usage: scripts/issue3_runs.sh [TASKS]   (default: all six tasks of the table)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
tasks="${1:-passkey_1k,niah_1k,ctxqa_1k,imdb,city_facts,country_capital}"
lm_eval="${LM_EVAL:-.venv/bin/lm_eval}"
for variant in none massive nonmassive; do
  "$lm_eval" --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks "$tasks" --batch_size 4 --device cpu \
    --metadata '{"imdb_path": "tests/data/imdb_test_200.csv"}' \
    --output_path "results/issue3/${variant}" --log_samples
done
