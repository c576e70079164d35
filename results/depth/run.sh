#!/usr/bin/env bash
# Remakes results/depth/smollm2-135m/{depth.json,depth.png} and its tuned lens cache (tuned_lens.pt, not committed).
# One thread and `nice`: the machine is shared. About 40-60 minutes on 2 shared CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 nice .venv/bin/qk-ablate depth \
  --model_args pretrained=smollm2-135m,dtype=float32 \
  --intervention ablate=massive --intervention ablate=nonmassive \
  --tasks passkey_1k,niah_1k,city_facts,country_capital --limit 40 \
  --lens both --train-lens
