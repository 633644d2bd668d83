"""File names and limits shared by the FPT scheduler, its stage jobs and its ledger."""
from __future__ import annotations

from pathlib import Path

LEDGER, REPORT, SCORES = "fpt_ledger.json", "fpt_report.json", "neuron_scores.safetensors"
JOB_FILE, STAGE_INFO = "fpt_job.json", "fpt_stage.json"
LEDGER_FORMAT = "ds_prompt.fpt_ledger/1"
ARTIFACTS = ("prompt.safetensors", "prompt.json", "metrics.json")
LENGTH_SAMPLE = 2000           # training examples whose lengths set the analytic FLOPs
DIST_LAUNCHERS = ("deepspeed", "torchrun", "torch.distributed.run", "torch.distributed.launch")
GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT")
FINGERPRINT_SKIP = {"output_dir", "progress"}   # flags that may change between re-runs of one FPT run


def stage_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"stage_{index}"
