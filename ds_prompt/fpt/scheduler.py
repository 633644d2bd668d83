"""The FPT stage scheduler: every stage is its own DeepSpeed job; a ledger makes the whole run resumable.

Split by job: stage.py (a stage's job file and its partial-model transform; the stage process itself is the
recipe ds_prompt.recipes.fpt_stage), ledger.py (finished stages and the run's identity), launch.py (starting
and supervising stage processes), names.py (file names); this module is the run loop.

Layout under D = --output_dir:
  D/stage_<k>/              stage k's run (checkpoints/, tb/, metrics.json, prompt.*) + fpt_job.json (its job)
                            + fpt_stage.json (full-model shape, length stats, kept layers/neurons)
  D/neuron_scores.safetensors  FFN neuron scores, computed once at the first width-reduced stage and reused
                            by every later one (nested selections)
  D/fpt_ledger.json         finished stages with their metrics, wall time and FLOPs (atomic writes)
  D/fpt_report.json, D/tb/  FLOPs ledger vs plain PT; the final prompt.safetensors/prompt.json/metrics.json

Stage k > 0 starts from stage k-1's consolidated trainable state (`--init_state`): prompt, optimizer
moments, LR-schedule position, step counter, RNG and data position carry over unchanged (`max_steps` is the
cumulative step count); with `reset_optimizer` only the prompt carries over (fresh optimizer, step 0).
Re-running the same command skips finished stages; an unfinished stage resumes from its own latest checkpoint
(the trainer's `--resume`), at any world size. A stage job is started as
    <launcher tokens> (-m | --module) ds_prompt.cli fpt_stage --stage_file D/stage_<k>/fpt_job.json
in its own process group, which is killed if the scheduler is interrupted and receives SIGTERM if the
scheduler dies (Linux PR_SET_PDEATHSIG on the launcher process), so no stage outlives its scheduler.
With per-node launchers (no ssh) one scheduler runs on every node (see `run_fpt`); node 0 writes the ledger.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from safetensors import safe_open

from ds_prompt.config import TrainConfig, config_dict
from ds_prompt.engine.progress import on_sigterm
from ds_prompt.engine.run_folder import take_lock
from ds_prompt.errors import UserError
from ds_prompt.faults import fault_point
from ds_prompt.fpt.flops import BACKWARD_CONVENTIONS, LengthStats, ModelShape, forward_flops, step_flops
from ds_prompt.fpt.launch import run_job, stage_command
from ds_prompt.fpt.ledger import Ledger
from ds_prompt.fpt.names import ARTIFACTS, JOB_FILE, LEDGER, REPORT, SCORES, STAGE_INFO, stage_dir
from ds_prompt.fpt.plan import StagePlan
from ds_prompt.fpt.report import build_report, compare_with_pt, write_tensorboard
from ds_prompt.fpt.stage import StageJob
from ds_prompt.io import atomic_path, ensure_writable_dir, write_json


def _stage_config(cfg: TrainConfig, root: Path, index: int, plan: StagePlan) -> TrainConfig:
    ends = plan.end_steps()
    reset = cfg.reset_optimizer and index > 0
    max_steps = plan.stages[index].steps if reset else ends[index]
    # Stages hand over through checkpoints: without --save_every, only each stage's final one is written.
    save_every = cfg.save_every or max_steps + 1
    return dataclasses.replace(cfg, output_dir=str(stage_dir(root, index)), max_steps=max_steps,
                               save_every=save_every, resume=True, reset_optimizer=reset,
                               schedule_steps=plan.stages[index].steps if reset else plan.total_steps,
                               init_state=str(stage_dir(root, index - 1)) if index else None)


def _median_scalar(tb_dir: Path, tag: str) -> float | None:
    """Median of a TensorBoard scalar over its logged windows (None if tensorboard or the tag is missing).
    The median ignores the first window's warm-up (allocations, kernel builds) on short stages."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        values = sorted(e.value for e in acc.Scalars(tag))
    except (ImportError, KeyError):
        return None
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _stage_record(cfg: TrainConfig, plan: StagePlan, index: int, launcher: str | None, wall_s: float,
                  backward: str) -> dict:
    out = stage_dir(cfg.resolved_output_dir(), index)
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / STAGE_INFO).read_text())
    stage = plan.stages[index]
    shape, lengths = ModelShape.from_dict(info["shape"]), LengthStats(**info["lengths"])
    per_step = step_flops(shape, lengths, cfg.batch_size, stage.depth, stage.width, backward)
    full = step_flops(shape, lengths, cfg.batch_size, backward=backward)
    layers_per_step = step_flops(shape, lengths, cfg.batch_size, stage.depth, stage.width, backward, True)
    layers_full = step_flops(shape, lengths, cfg.batch_size, backward=backward, layers_only=True)
    end = plan.end_steps()[index]
    return {
        "index": index, "depth": stage.depth, "width": stage.width, "steps": stage.steps,
        "start_step": end - stage.steps, "end_step": end,
        "layers": {k: len(v) for k, v in info["partial"]["layers"].items()},
        "kept_layers": info["partial"]["layers"], "neurons_per_ffn": sorted(set(info["partial"]["neurons"].values())),
        "flops_per_step": per_step, "flops": per_step * stage.steps, "full_flops_per_step": full,
        "full_model": per_step == full,
        "layer_flops_per_step": layers_per_step, "layer_full_flops_per_step": layers_full,
        "wall_s": wall_s, "train_s_per_step": _median_scalar(out / "tb", "train/s_per_step"),
        "accuracy": metrics["accuracy"], "accuracy_before": metrics["accuracy_before"],
        "history": [{"step": h["step"], "accuracy": h["accuracy"]} for h in metrics.get("history", [])],
        "world_size": metrics["world_size"], "launcher": launcher or "python", "model_shape": info["shape"],
    }


def _scoring_record(root: Path) -> dict | None:
    """The neuron-scoring forwards of this plan, from the scores file's metadata (the stage that computed them,
    its sample count and their lengths) and that stage's model shape: samples x ranks (every rank scores
    every sample) plain forwards of the full model. None when the plan keeps every neuron."""
    path = root / SCORES
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "stage" not in meta or "samples" not in meta:
        raise UserError(f"{path} has no stage/samples metadata (not written by `ds-prompt fpt`): delete it and "
                        f"re-run the fpt command, or move it elsewhere")
    index, samples = int(meta["stage"]), int(meta["samples"])
    info = json.loads((stage_dir(root, index) / STAGE_INFO).read_text())
    # the scored samples' lengths (files written before they were recorded: the stage's length sample, of
    # which the scored samples are the first `samples`)
    lengths = LengthStats(**(json.loads(meta["lengths"]) if "lengths" in meta else info["lengths"]))
    per_example = forward_flops(ModelShape.from_dict(info["shape"]), lengths)
    ranks = int(info.get("world_size", 1))
    return {"stage": index, "samples": samples, "ranks": ranks, "flops_per_example": per_example,
            "flops": samples * ranks * per_example}


def _publish(root: Path, last: Path) -> None:
    """The final prompt artifact is the last stage's."""
    for name in ARTIFACTS:
        with atomic_path(root / name) as tmp:
            shutil.copyfile(last / name, tmp)


def _say(text: str) -> None:
    print(f"[fpt] {text}", file=sys.stderr, flush=True)


def run_fpt(cfg: TrainConfig, plan: StagePlan, launcher: str | None = None, score_samples: int = 1000,
            retries: int = 0, backward: str = "activations", node_rank: int = 0,
            pt_reference: str | None = None) -> dict:
    """Run (or resume) every stage of `plan`; returns the report also written to D/fpt_report.json.

    `launcher` is the default stage launcher (a stage's own `launcher` in the plan wins, then this, then the
    plan's top-level one, then plain Python); `retries` re-launches a failed stage that many times (it
    resumes from its checkpoint). UserError if a stage still fails: re-running the command resumes it.

    Per-node launchers (`deepspeed --no_ssh --node_rank N`, `torchrun --node_rank N`) need one scheduler per
    node, all with the same command and a shared D. Node 0 keeps the ledger and writes the report and the
    final prompt; a scheduler with `node_rank` > 0 follows: it starts its node's part of every unfinished
    stage and reads the outcome from D. Both decide "finished" by the same test (the stage's metrics.json
    reached its last step), so after any crash the re-run schedulers skip the same stages and meet in the
    same stage job.

    `pt_reference`: a plain PT run of the same model, task, seed and data order (a `ds-prompt train` folder
    or an FPT `--plan pt` folder); the report then compares the plan with it at equal FLOPs (`pt_comparison`).
    A one-stage full-model plan is its own reference.
    """
    if backward not in BACKWARD_CONVENTIONS:
        raise UserError(f"--backward '{backward}' is unknown: use one of {', '.join(BACKWARD_CONVENTIONS)}")
    root = Path(cfg.resolved_output_dir())
    ensure_writable_dir(root)
    leader = node_rank == 0
    lock = take_lock(root) if leader else None  # one scheduler per folder (node 0); released when it exits
    try:
        return _run_plan(cfg, plan, root, leader, launcher, score_samples, retries, backward, node_rank,
                         pt_reference)
    finally:
        if lock is not None:
            lock.close()


def _run_plan(cfg: TrainConfig, plan: StagePlan, root: Path, leader: bool, launcher: str | None,
              score_samples: int, retries: int, backward: str, node_rank: int, pt_reference: str | None) -> dict:
    ledger = Ledger.open(root / LEDGER, plan, cfg) if leader else Ledger.check(root / LEDGER, plan, cfg)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C (the CLI's one handler, also when run_fpt is called from Python), so
    # run_job kills the stage's process group and the CLI ends in one line.
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        for index, stage in enumerate(plan.stages):
            stage_launcher = stage.launcher or launcher or plan.launcher
            if (leader and ledger.finished(index)) or _stage_complete(stage_dir(root, index),
                                                                     _stage_config(cfg, root, index, plan).max_steps):
                _say(f"stage {index} finished earlier: skipped")
            else:
                _run_stage_job(cfg, root, plan, index, stage_launcher, score_samples, retries, ledger)
            if leader and not ledger.finished(index):
                ledger.finish(index, _stage_record(cfg, plan, index, stage_launcher, ledger.wall_s(index), backward))
            fault_point("between_stages", index)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if not leader:
        _say(f"node {node_rank}: all {len(plan.stages)} stages done; node 0 writes the report ({root / REPORT})")
        return {"node_rank": node_rank, "stages": len(plan.stages), "total_steps": plan.total_steps}
    records = [ledger.finished(i) for i in range(len(plan.stages))]
    report = build_report(plan, records, backward, cfg.reset_optimizer, _scoring_record(root))
    if pt_reference is not None or len(plan.stages) == 1 and records[0]["full_model"]:
        report["pt_comparison"] = compare_with_pt(report, pt_reference or root, cfg)
    write_json(root / REPORT, report)
    write_tensorboard(root, report)
    _publish(root, stage_dir(root, len(plan.stages) - 1))
    _say(f"done: {plan.total_steps} steps at {report['flops_fraction']:.3f} of plain PT's FLOPs; "
         f"accuracy {report['accuracy']:.4f}; report {root / REPORT}")
    if "pt_comparison" not in report:
        _say("no PT comparison in the report (PT's accuracy at equal FLOPs, FLOPs to reach PT's final accuracy): "
             "run plain PT (`ds-prompt fpt pt` or `ds-prompt train`) with the same model, task, seed and "
             "--eval_every, then re-run this command with --pt_reference <its --output_dir> (finished stages are "
             "skipped; only the report is rebuilt)")
    return report


def _run_stage_job(cfg, root: Path, plan: StagePlan, index: int, launcher: str | None, score_samples: int,
                   retries: int, ledger: "Ledger | None") -> None:
    stage = plan.stages[index]
    stage_cfg = _stage_config(cfg, root, index, plan)
    out = stage_dir(root, index)
    out.mkdir(parents=True, exist_ok=True)
    job = StageJob(index, config_dict(stage_cfg), stage.depth, stage.width, str(root / SCORES), score_samples)
    job.save(out / JOB_FILE)  # every node writes the same job (atomically): no node waits for another
    for attempt in range(retries + 1):
        command = stage_command(launcher, out / JOB_FILE)
        end = plan.end_steps()[index]
        _say(f"stage {index}: depth {stage.depth}, width {stage.width}, steps {end - stage.steps}->{end} "
             f"(attempt {attempt + 1}): {shlex.join(command)}")
        returncode, wall = run_job(command)
        if ledger is not None:
            ledger.attempt(index, wall, returncode)
        if returncode == 0 and _stage_complete(out, stage_cfg.max_steps, wait_s=0 if ledger else 60):
            return
    raise UserError(f"stage {index} failed (exit status {returncode}); finished stages and its checkpoints are "
                    f"kept: re-run the same command to resume stage {index} from its last checkpoint")


def _stage_complete(out: Path, max_steps: int, wait_s: float = 0.0) -> bool:
    """The stage's run reached its last step (its metrics.json, written by global rank 0 before the job's
    final barrier). `wait_s`: on another node, a shared filesystem may show the file a little later."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if json.loads((out / "metrics.json").read_text())["steps"] == max_steps:
                return True
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)
