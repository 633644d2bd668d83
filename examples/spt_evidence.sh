#!/usr/bin/env bash
# SPT evidence on real data with the packaged all-MiniLM-L6-v2: multitask training on 5 tasks, zero-shot on
# held-out mr (sentiment) and snli (NLI): SPT vs one shared soft prompt vs the untrained prompt.
#   DATA=../shared/data OUT=runs/spt STEPS=300 bash examples/spt_evidence.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/spt}
STEPS=${STEPS:-300}
C=(--model minilm --tasks sst2,rte,qnli,mrpc,agnews --heldout mr,snli --data_dir "$DATA" --max_steps "$STEPS"
   --train_limit 2000 --eval_limit 300 --batch_size 16 --seed 42 --progress False)
for mode in spt shared untrained; do
  ds-prompt spt train "${C[@]}" --mode "$mode" --output_dir "$OUT/$mode"
done
ds-prompt spt inspect "$OUT/spt"
