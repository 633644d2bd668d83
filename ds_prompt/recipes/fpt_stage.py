"""The FPT stage recipe: one stage process of `ds-prompt fpt` (its job file -> the stage's partial model ->
prompt tuning). The scheduler (fpt.scheduler) starts one such process per stage."""
from __future__ import annotations

from ds_prompt.config import TrainConfig, build_config
from ds_prompt.fpt.stage import StageJob, StageTransform
from ds_prompt.recipes.prompt_tuning import train


def run_stage(stage_file: str) -> dict:
    """Run one stage (every rank of the stage job calls this). Returns the trainer's metrics."""
    job = StageJob.load(stage_file)
    cfg = build_config(TrainConfig, None, **job.train)
    return train(cfg, model_transform=StageTransform(cfg, job))
