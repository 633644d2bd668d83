"""`ds-prompt fpt` (the stage scheduler) and `ds-prompt fpt_stage` (one stage job, started by the scheduler)."""
from __future__ import annotations

import dataclasses

from ds_prompt.errors import UserError


def fpt(plan: str, config: str | None = None, launcher: str | None = None, reset_optimizer: bool | None = None,
        score_samples: int = 1000, retries: int = 0, backward: str = "activations", node_rank: int | None = None,
        pt_reference: str | None = None, **flags) -> None:
    """Fast Prompt Tuning: train the prompt through a plan of partial models, each stage its own DeepSpeed job.

    --plan ld | fr | cr | pt (the paper's schedules scaled to --max_steps) or a JSON/YAML plan file of stages
    {depth: layers (int) or fraction (float), width: fraction of FFN neurons, steps, launcher?}
    (see examples/fpt_ld.json). --launcher "torchrun --nproc_per_node 2 --master_port {free_port}" or
    "deepspeed --hostfile H --num_gpus 8" starts every stage (a stage's own launcher wins; default: this
    Python, 1 rank). --reset_optimizer: at each expansion keep only the prompt (fresh optimizer and schedule;
    ablation). --score_samples N: training samples for FFN neuron scores (mean |activation| with the prompt
    at the first width-reduced stage). --retries N: re-launch a failed stage N times. --backward
    activations|standard: FLOPs convention of the report. --node_rank N: with a per-node launcher
    ("deepspeed --hostfile H --no_ssh --node_rank N --master_addr A --master_port P", torchrun --node_rank N;
    a fixed port, not {free_port}) run this same command on every node, sharing --output_dir; node 0 keeps
    the ledger and writes the report (default: the launcher's --node_rank, else 0). --pt_reference DIR: a
    plain PT run of the same model, task, seed and data order (`ds-prompt train` or `fpt --plan pt`); the
    report's pt_comparison then gives PT's accuracy at the plan's FLOPs and the FLOPs the plan needed to reach
    PT's final accuracy (evaluate often, e.g. --eval_every 25, in both runs). All train flags apply
    (--model --task --data_dir --output_dir --batch_size --lr --deepspeed ...; see `ds-prompt train --help`);
    with a plan file the total steps are the plan's. Writes D/stage_<k>/ runs, D/fpt_ledger.json,
    D/fpt_report.json (flops_fraction, curve, pt_comparison, per-stage list), D/tb and the final prompt.
    Re-running the same command resumes.
    """
    from ds_prompt.config import TrainConfig, build_config
    from ds_prompt.fpt.launch import launcher_node_rank
    from ds_prompt.fpt.plan import PRESETS, load_plan
    from ds_prompt.fpt.scheduler import run_fpt
    named = launcher_node_rank(launcher)
    node_rank = named if node_rank is None else node_rank
    node_rank = 0 if node_rank is None else node_rank
    for name, value, low in (("score_samples", score_samples, 1), ("retries", retries, 0),
                             ("node_rank", node_rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"--{name} {value!r} must be an integer >= {low}")
    if named is not None and named != node_rank:
        raise UserError(f"--node_rank {node_rank} differs from the launcher's --node_rank {named}: give one")
    if named is not None and "{free_port}" in launcher:
        raise UserError("--launcher is per node (--node_rank) but uses {free_port}: every node's launcher needs "
                        "the same fixed --master_port")
    cfg = build_config(TrainConfig, config, reset_optimizer=reset_optimizer, **flags)
    if cfg.init_state:
        raise UserError("fpt chains its stages' states itself: drop --init_state (start from a trained prompt "
                        "with --init file:PROMPT)")
    _validate_before_launch(cfg)
    if pt_reference is not None:
        from ds_prompt.fpt.report import check_reference
        check_reference(str(pt_reference), cfg)
    stages = load_plan(plan, cfg.max_steps)
    if plan not in PRESETS and "max_steps" in flags and int(flags["max_steps"]) != stages.total_steps:
        raise UserError(f"--max_steps {flags['max_steps']} differs from the {stages.total_steps} steps of plan "
                        f"'{plan}': drop --max_steps or edit the plan")
    cfg = dataclasses.replace(cfg, max_steps=stages.total_steps)
    stages.check_against(*model_stacks(cfg.model))
    run_fpt(cfg, stages, launcher, score_samples, retries, backward, node_rank,
            None if pt_reference is None else str(pt_reference))


def model_stacks(model: str) -> tuple[dict[str, int], int | None]:
    """({stack: layers}, d_ff) of `model` from its config alone (no weights are loaded)."""
    if model.startswith("tiny:"):
        from ds_prompt.models.tiny import build_tiny
        config = build_tiny(model.split(":", 1)[1])[0].config
    else:
        from transformers import AutoConfig

        from ds_prompt.models.backbone import DEFAULT_MODEL, packaged_minilm_path
        from ds_prompt.models.gguf import resolve_model
        path = packaged_minilm_path() if model == DEFAULT_MODEL else resolve_model(model)[0]
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the config of --model '{model}' ({type(exc).__name__}): pass a local "
                            f"HF model folder, a .gguf file or a reachable hub name") from None
    layers = next((getattr(config, k) for k in ("num_hidden_layers", "num_layers", "n_layer")
                   if getattr(config, k, None)), None)
    if layers is None:
        raise UserError(f"cannot find the layer count of --model '{model}' in its config: FPT plans need "
                        f"num_hidden_layers (or num_layers / n_layer)")
    stacks = {"encoder" if getattr(config, "is_encoder_decoder", False) else "layers": layers}
    if getattr(config, "is_encoder_decoder", False):
        stacks["decoder"] = getattr(config, "num_decoder_layers", None) or layers
    d_ff = next((getattr(config, k) for k in ("intermediate_size", "d_ff", "n_inner") if getattr(config, k, None)),
                None)
    return stacks, d_ff


def _validate_before_launch(cfg) -> None:
    """Fail here, with one error line, on what every stage job would fail on (task, data, DeepSpeed config)."""
    from ds_prompt.data.loading import resolve_data_dir
    from ds_prompt.data.tasks import get_task
    from ds_prompt.engine.setup import load_ds_config
    task = get_task(cfg.task)
    resolve_data_dir(task, cfg.data_dir)
    load_ds_config(cfg.deepspeed)


def fpt_stage(stage_file: str) -> None:
    """Run one FPT stage job (started by `ds-prompt fpt`; every rank of the job runs this)."""
    from ds_prompt.recipes.fpt_stage import run_stage
    run_stage(stage_file)


COMMANDS = {"fpt": fpt, "fpt_stage": fpt_stage}
