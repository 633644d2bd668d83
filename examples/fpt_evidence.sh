#!/usr/bin/env bash
# FPT evidence on real data with the packaged all-MiniLM-L6-v2 (6 layers, d_ff 1536): plain PT vs FPT-LD/FR/CR
# at the same step budget, on a sentiment and an NLI task. Prints accuracy, FLOPs fraction and wall time.
#   DATA=../shared/data OUT=runs/fpt STEPS=300 bash examples/fpt_evidence.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/fpt}
STEPS=${STEPS:-300}
COMMON=(--data_dir "$DATA" --max_steps "$STEPS" --eval_limit 500 --train_limit 8000 --progress False --seed 42 --lr 0.01)
for task in ${TASKS:-sst2 rte}; do
  for plan in pt ld fr cr; do
    ds-prompt fpt --plan "$plan" --task "$task" --output_dir "$OUT/$task/$plan" "${COMMON[@]}"
  done
done
python - "$OUT" <<'PY'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
print(f"{'task':6s} {'plan':4s} {'accuracy':>8s} {'flops_frac':>10s} {'wall_s':>7s} {'wall/pt':>7s} {'step_time_frac':>14s}")
for task in sorted(p.name for p in root.iterdir() if p.is_dir()):
    rows = {p: json.loads((root / task / p / "fpt_report.json").read_text()) for p in ("pt", "ld", "fr", "cr")
            if (root / task / p / "fpt_report.json").exists()}
    for plan, r in rows.items():
        frac = r["wall_fraction_estimate"]
        print(f"{task:6s} {plan:4s} {r['accuracy']:8.4f} {r['flops_fraction']:10.3f} {r['wall_s']:7.1f} "
              f"{r['wall_s'] / rows['pt']['wall_s']:7.3f} {frac if frac is None else round(frac, 3)!s:>14s}")
PY
