#!/usr/bin/env bash
# Fast Prompt Tuning across the nodes of a hostfile (lines "host slots=N"). --output_dir must be on a
# filesystem shared by all nodes. Two ways to run it:
#  - with passwordless ssh: run this ONCE, on the first node. The FPT scheduler stays there and starts every
#    stage as its own multi-node DeepSpeed job (pdsh/ssh to the other nodes).
#      HOSTFILE=launchers/hostfile.example launchers/fpt_multi_node.sh --plan examples/fpt_ld.json \
#          --model google/t5-large-lm-adapt --task mnli --output_dir /shared/runs/fpt-mnli --deepspeed zero3 \
#          --optimizer adafactor --lr 0.3 --batch_size 32 --prompt_length 20 --init uniform --save_every 500
#  - without ssh (NO_SSH=1): run the same command on EVERY node with NODE_RANK=0..K-1 and the same
#    MASTER_ADDR/MASTER_PORT. Each node runs a scheduler; node 0 keeps the ledger and writes the report, the
#    others start their part of each stage job and follow the outcome on the shared --output_dir.
# If anything dies (a rank, a node, this script), run the same command(s) again: finished stages are skipped
# (D/fpt_ledger.json) and the interrupted stage resumes from its last checkpoint, at any world size (edit the
# hostfile to drop a dead node). Everything after the script name is passed to `ds-prompt fpt`. A plan stage
# may name its own launcher (see examples/fpt_ld_multi_world.yaml) to run on other nodes or GPUs.
set -euo pipefail
HOSTFILE=${HOSTFILE:-launchers/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-$(head -n1 "$HOSTFILE" | awk '{print $1}')}
if [[ "${NO_SSH:-0}" == "1" ]]; then
    # Every node must meet at the same port, stage after stage: a fixed one.
    LAUNCHER="deepspeed --hostfile $HOSTFILE --no_ssh --node_rank ${NODE_RANK:?set NODE_RANK with NO_SSH=1}"
    LAUNCHER="$LAUNCHER --master_addr $MASTER_ADDR --master_port ${MASTER_PORT:-29500}"
else
    # {free_port} is replaced by a fresh port for each stage, so a restarted stage never meets a stale
    # rendezvous.
    LAUNCHER="deepspeed --hostfile $HOSTFILE --master_addr $MASTER_ADDR --master_port {free_port}"
fi
exec python -m ds_prompt.cli fpt --launcher "$LAUNCHER" "$@"
