#!/usr/bin/env bash
# Prompt tuning on one node with N GPUs (or N CPU ranks with DS_ACCELERATOR=cpu; configs fit both).
#   NUM_GPUS=8 launchers/single_node.sh --model meta-llama/Llama-3.1-8B --task sst2 --deepspeed zero3
# Everything after the script name is passed to `ds-prompt train`.
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" \
    --module ds_prompt.cli train "$@"
