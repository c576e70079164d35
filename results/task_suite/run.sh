#!/usr/bin/env bash
# Remakes results/task_suite: the embedded SmolLM2-135M on CPU, default interventions
# baseline / ablate=massive / ablate=nonmassive, every task at its full size (>= 100 documents), then the
# paired-bootstrap reports with and without imdb.   Usage: bash results/task_suite/run.sh [TASKS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
tasks="${1:-passkey_1k,niah_1k,ctxqa_1k,imdb,city_facts,country_capital}"
lm_eval="${LM_EVAL:-.venv/bin/lm_eval}"
for variant in none massive nonmassive; do
  "$lm_eval" --model qk_ablated \
    --model_args "pretrained=smollm2-135m,ablate=${variant}" \
    --tasks "$tasks" --batch_size 4 --device cpu \
    --metadata '{"imdb_path": "tests/data/imdb_test_200.csv"}' \
    --output_path "results/task_suite/${variant}" --log_samples
done
qk="${QK_ABLATE:-.venv/bin/qk-ablate}"
runs="results/task_suite/none results/task_suite/massive results/task_suite/nonmassive"
"$qk" report $runs --out results/task_suite/report
"$qk" report $runs --tasks passkey_1k,niah_1k,ctxqa_1k,city_facts,country_capital --out results/task_suite/report_without_imdb
