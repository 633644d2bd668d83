#!/usr/bin/env bash
# Prompt tuning across nodes listed in a hostfile (lines "host slots=N"); the deepspeed launcher reaches
# the other nodes over passwordless ssh (pdsh) and starts N ranks on each.
#   HOSTFILE=launchers/hostfile.example MASTER_ADDR=node1 launchers/multi_node.sh --model ... --deepspeed zero3
# Without ssh, start this on every node with NODE_RANK=0..K-1 and NO_SSH=1 (all nodes need the same
# MASTER_ADDR/PORT). Everything after the script name is passed to `ds-prompt train`.
set -euo pipefail
HOSTFILE=${HOSTFILE:-launchers/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-$(head -n1 "$HOSTFILE" | awk '{print $1}')}
MASTER_PORT=${MASTER_PORT:-29500}
extra=()
if [[ "${NO_SSH:-0}" == "1" ]]; then
    extra=(--no_ssh --node_rank "${NODE_RANK:?set NODE_RANK with NO_SSH=1}")
fi
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "${extra[@]}" --module ds_prompt.cli train "$@"
