#!/usr/bin/env bash
# Fast Prompt Tuning across the nodes of a hostfile (lines "host slots=N"). Run this ONCE, on the first node:
# the FPT scheduler stays there and starts every stage as its own multi-node DeepSpeed job (pdsh/ssh to the
# other nodes), each reading the previous stage's consolidated trainable state. --output_dir must be on a
# filesystem shared by all nodes. If anything dies (a rank, a node, this script), run the same command
# again: finished stages are skipped (D/fpt_ledger.json) and the interrupted stage resumes from its last
# checkpoint, at any world size (edit the hostfile to drop a dead node).
#   HOSTFILE=launchers/hostfile.example launchers/fpt_multi_node.sh --plan examples/fpt_ld.json \
#       --model google/t5-large-lm-adapt --task mnli --output_dir /shared/runs/fpt-mnli --deepspeed zero3 \
#       --optimizer adafactor --lr 0.3 --batch_size 32 --prompt_length 20 --init uniform --save_every 500
# Everything after the script name is passed to `ds-prompt fpt`. A plan stage may name its own launcher
# (see examples/fpt_ld_multi_world.yaml) to run on a different set of nodes or GPUs.
set -euo pipefail
HOSTFILE=${HOSTFILE:-launchers/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-$(head -n1 "$HOSTFILE" | awk '{print $1}')}
# {free_port} is replaced by a fresh port for each stage, so a restarted stage never meets a stale rendezvous.
LAUNCHER="deepspeed --hostfile $HOSTFILE --master_addr $MASTER_ADDR --master_port {free_port}"
exec python -m ds_prompt.cli fpt --launcher "$LAUNCHER" "$@"
