#!/usr/bin/env bash
# Prompt-transferability evidence on real data with the packaged all-MiniLM-L6-v2 (REFERENCE §1 workflow):
# train prompts on 2 sentiment, 3 NLI and 1 paraphrase task, the zero-shot transfer matrix, indicators vs
# transfer accuracy (Spearman), and the transfer-init speed-up. CPU, ~30-40 min on 2 cores.
#   DATA=../shared/data OUT=runs/evidence bash examples/transfer_evidence.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/evidence}
STEPS=${STEPS:-300}
TASKS=(sst2 mr qnli rte snli mrpc)
for t in "${TASKS[@]}"; do
  [[ -f "$OUT/prompts/$t/prompt.safetensors" ]] && continue   # trained already (re-runs skip it)
  ds-prompt train --task "$t" --data_dir "$DATA" --output_dir "$OUT/prompts/$t" --max_steps "$STEPS" \
      --eval_every 100 --eval_limit "${LIMIT:-500}" --progress False --lr 0.01
done
prompts=$(printf "$OUT/prompts/%s," "${TASKS[@]}"); prompts=${prompts%,}
tasks=$(IFS=,; echo "${TASKS[*]}")
ds-prompt transfer matrix --prompts "$prompts" --tasks "$tasks" --data_dir "$DATA" --output_dir "$OUT/matrix" --limit "${LIMIT:-500}"
ds-prompt transfer indicators --prompts "$prompts" --metric all --output_dir "$OUT/indicators" --against "$OUT/matrix/matrix.csv"
ds-prompt transfer speedup --prompt "$OUT/prompts/sst2" --task mr --data_dir "$DATA" --output_dir "$OUT/speedup" \
    --max_steps "${SPEEDUP_STEPS:-200}" --lr 0.01 --eval_every 20 --eval_limit "${LIMIT:-500}" --progress False
