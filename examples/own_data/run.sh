#!/usr/bin/env bash
# Your own data end to end (README "Your own data"): three tasks from the files beside this script,
# no intervention vs massive-value destruction on the embedded model, then report and gate, which
# read each task's kind from its template (no --kinds).   Usage: bash examples/own_data/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-runs/own_data}"
for ablate in none massive; do
  .venv/bin/lm_eval --model qk_ablated --model_args "pretrained=smollm2-135m,ablate=${ablate}" \
    --include_path examples/own_data/tasks --tasks my_facts,my_statements,niah_mydocs_2k \
    --metadata '{"num_docs": 20}' --batch_size 4 --device cpu --log_samples --output_path "$out/$ablate"
done
.venv/bin/qk-ablate report "$out/none" "$out/massive" --out "$out/report"
.venv/bin/qk-ablate gate --baseline "$out/none" --candidate "$out/massive" --max-drop contextual=5,parametric=5 \
  --junit "$out/gate.xml" || echo "gate exit status: $?"
