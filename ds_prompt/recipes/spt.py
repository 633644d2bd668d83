"""The SPT recipe: multitask prompted training of a memory bank, and zero-shot evaluation on held-out tasks.

Read top to bottom: `train` sets up (tasks -> backbone -> SPT model -> DeepSpeed engine), `_train_loop` runs
the steps, `_finish` writes the bank. Every rank runs the same code; only rank 0 writes files. Each optimizer
step takes one GLOBAL batch of the task mixture (the same samples at any world size), split into
world_size x grad_accum micro-batches.

Protocols (see docs/spt.md):
- multitask + zero-shot: `--tasks A,B,C --heldout X,Y`; held-out tasks' discrete prompts retrieve from the
  bank; accuracy is the mean over each task's discrete prompts.
- pretrain, then prompt-tune: train a bank on one group, then `--tasks <other group> --init_bank <bank>`.
- baselines: `--mode shared` (one prompt of the same total length trained on the mixture: a bank of size 1,
  k=1, no task prompts) and `--mode untrained` (no steps: the initialization, evaluated).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from ds_prompt import dist
from ds_prompt.builders import load_model_for
from ds_prompt.config import DataArgs, EngineArgs, LoopArgs, ModelArgs, OptimArgs, model_slug
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import progress
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine import state as ckpt
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.engine.logging import RunLogger
from ds_prompt.engine.loop import LoopState, log_window, save_run_checkpoint, train_steps
from ds_prompt.engine.run_folder import backbone_fingerprint, data_fingerprint
from ds_prompt.errors import UserError, require
from ds_prompt.io import ensure_writable_dir, write_json, write_tensors
from ds_prompt.models.checkpointing import enable_activation_checkpointing
from ds_prompt.models.family import Family
from ds_prompt.spt.bank import (
    BankConfig,
    Combine,
    QueryProjection,
    QuerySource,
    SPTModel,
    TaskPromptKind,
    build_spt_model,
    init_spt_prompt,
    load_bank,
    load_state,
    parse_choice,
    save_bank,
)
from ds_prompt.spt.mixture import MixturePlan, TaskSuite, mixing_rates
from ds_prompt.spt.mixture import micro_batches as micro_batches_of
from ds_prompt.spt.trained import BACKBONE_FILE, check_heads, load_trained

EVAL_FILE = "spt_eval.json"


class Mode(str, Enum):
    SPT = "spt"              # memory bank + task prompts
    SHARED = "shared"        # baseline: one prompt for all tasks (bank of size 1, k=1, no task prompts)
    UNTRAINED = "untrained"  # baseline: the initialization, evaluated without training


@dataclass
class SPTConfig(EngineArgs, LoopArgs, OptimArgs, DataArgs, ModelArgs):
    """Everything `ds-prompt spt train` needs: the shared groups plus SPT's own settings."""
    tasks: str = "demo"                   # comma-separated training (seen) tasks
    heldout: str = ""                     # comma-separated zero-shot tasks (never trained on)
    mode: str = "spt"                     # spt | shared | untrained
    lr: float = 3e-2                      # bank, task prompts, query projection, linear heads
    train_backbone: bool = False          # the paper's full fine-tuning experiment (i)
    backbone_lr: float = 1e-5
    # memory bank (BankConfig; open choices of our reading, see docs/spt.md)
    bank_size: int = 16
    memory_length: int = 10
    top_k: int = 2
    similarity: str = "cosine"
    combine: str = "weighted"
    pooling: str = "mean"
    temperature: float = 0.0
    query_source: str = "instruction"
    instruction_in_input: bool = False    # also put the drawn discrete prompt into the model input (T0-style)
    query_projection: str = "none"
    task_prompt: str = "per_task"
    task_prompt_length: int = 10
    unseen_prompt: str = "mean"
    init: str = "normal:0.02"             # values and task prompts
    key_init: str = "instructions"        # instructions | normal
    init_bank: str | None = None          # a trained bank folder: start from its bank (second protocol)
    freeze_bank: bool = False             # with init_bank: tune only task prompts (and heads)
    # task mixture
    mixing: str = "temperature"           # temperature | proportional
    mixing_temperature: float = 2.0
    mixing_cap: int = 0                   # examples-proportional cap K; 0 = none
    eval_limit: int | None = 500          # per task
    eval_seen: bool = True                # also evaluate the training tasks
    eval_every: int = 0

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return self.output_dir
        return str(Path("runs") / f"spt-{model_slug(self.model)}-{self.mode}")


def task_list(value: str, flag: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (blank entries dropped)."""
    require(isinstance(value, str), f"--{flag} {value!r} must be comma-separated task names such as sst2,rte")
    return [name.strip() for name in value.split(",") if name.strip()]


def bank_config(cfg: SPTConfig, mode: Mode, d_model: int, num_tasks: int, saved: dict | None) -> BankConfig:
    """The BankConfig of a run. With --init_bank the bank geometry comes from the saved bank."""
    geometry = dict(size=cfg.bank_size, memory_length=cfg.memory_length, top_k=cfg.top_k,
                    similarity=cfg.similarity, combine=cfg.combine, pooling=cfg.pooling,
                    temperature=cfg.temperature, query_source=cfg.query_source,
                    query_projection=cfg.query_projection)
    if saved is not None:
        geometry = {k: saved[k] for k in geometry}
    bank = BankConfig(d_model, **geometry, task_prompt=cfg.task_prompt, task_prompt_length=cfg.task_prompt_length,
                      unseen_prompt=cfg.unseen_prompt, num_tasks=num_tasks)
    if mode is not Mode.SHARED:
        return bank
    require(saved is None, "--mode shared trains one prompt from scratch: drop --init_bank")
    return BankConfig(d_model, size=1, memory_length=bank.prompt_length, top_k=1, similarity=bank.similarity,
                      combine=Combine.WEIGHTED, pooling=bank.pooling, query_source=QuerySource.INSTRUCTION,
                      query_projection=QueryProjection.NONE, task_prompt=TaskPromptKind.NONE, num_tasks=num_tasks)


# ------------------------------------------------------------------------------------------------ train

@dataclass
class RunState(LoopState):
    before: dict | None = None


@dataclass
class _Context:
    cfg: SPTConfig
    out: str
    engine: object
    scheduler: object
    plan: MixturePlan
    suite: TaskSuite
    model: SPTModel
    backbone: object
    bank: BankConfig
    num_seen: int
    max_steps: int

    def train_mode(self) -> None:
        self.engine.train()
        self.backbone.model.eval()  # no dropout, even with --train_backbone: deterministic, resumable steps

    def evaluate(self) -> dict:
        ids = [t for t in range(len(self.suite.tasks)) if self.cfg.eval_seen or t >= self.num_seen]
        results = evaluate_tasks(self.engine, self.suite, ids, self.num_seen, self.cfg.eval_batch_size,
                                 self.engine.device)
        self.train_mode()
        return results


def train(cfg: SPTConfig) -> dict:
    """Train an SPT bank per `cfg`; returns the metrics (also <output_dir>/metrics.json and spt_eval.json).
    The output folder is claimed first (`engine.run_folder`): locked, resumed only if it holds this run."""
    mode = parse_choice(Mode, cfg.mode, "mode")
    seen, heldout = _task_specs(cfg)
    ds_setup.init_distributed()
    return ds_setup.run_in_claimed_folder(cfg.resolved_output_dir(), "spt", spt_identity(cfg, mode, seen, heldout),
                                          0 if mode is Mode.UNTRAINED else cfg.max_steps, cfg.resume, cfg.overwrite,
                                          lambda: _train(cfg, mode, seen, heldout))


def spt_identity(cfg: SPTConfig, mode: Mode, seen: list, heldout: list) -> dict:
    """What a resumed SPT run must share with the run in its folder (recorded in run.json)."""
    return {"model": cfg.model, "backbone": backbone_fingerprint(cfg.model), "mode": mode.value,
            "tasks": [t.name for t in seen], "heldout": [t.name for t in heldout],
            "data": {t.name: data_fingerprint(t, cfg.data_dir) for t in seen + heldout}, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "bank": [cfg.bank_size, cfg.memory_length, cfg.top_k,
                                                   cfg.task_prompt, cfg.task_prompt_length, cfg.query_source],
            "head": cfg.head, "init": cfg.init, "init_bank": cfg.init_bank, "max_length": cfg.max_length,
            "train_limit": cfg.train_limit, "instruction_in_input": cfg.instruction_in_input}


def _train(cfg: SPTConfig, mode: Mode, seen: list, heldout: list) -> dict:
    out = ds_setup.start_run(cfg.resolved_output_dir(), cfg.seed)
    ds_config = ds_setup.ds_config_for(cfg.deepspeed, cfg, cfg.grad_clip, cfg.dtype)
    with ds_setup.sharded_loading(ds_config):  # ZeRO-3: weights are partitioned as they load
        backbone = load_model_for(cfg.model, cfg.family, cfg.dtype, None, cfg.attn_implementation)
    start = load_bank(cfg.init_bank) if cfg.init_bank else None
    bank = bank_config(cfg, mode, backbone.d_model, len(seen), start[1] if start else None)
    suite = _load_suite(cfg, seen, heldout, backbone, bank.prompt_length)
    plan, rates = _mixture(cfg, suite, len(seen))
    model = _build_model(cfg, backbone, bank, seen, heldout, start)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(backbone.model)
    model.shortcuts = cfg.shortcuts  # per-row prompts: only the last-layer shortcut applies
    resumed = ckpt.load_latest(out) if cfg.resume else None
    if resumed:
        ckpt.restore_params(model, resumed[0])
    engine, scheduler = _engine(model, cfg, ds_config)

    run = RunState()
    if resumed:
        tensors, meta = resumed
        ckpt.restore_training(engine, scheduler, tensors, meta)
        run = RunState(step=meta["step"], history=meta["history"], before=meta["before"], tokens=meta["tokens"])

    max_steps = 0 if mode is Mode.UNTRAINED else cfg.max_steps
    progress.track(out, run)
    ctx = _Context(cfg, out, engine, scheduler, plan, suite, model, backbone, bank, len(seen), max_steps)
    log = RunLogger(os.path.join(out, "tb"), max_steps, run.step, cfg.progress, getattr(engine, "monitor", None))
    if resumed:
        log.message(f"resuming {out} at step {run.step}")
    try:
        if run.before is None:
            run.before = ctx.evaluate()
            _log_eval(log, 0, run.before)
        ctx.train_mode()
        _train_loop(ctx, run, log)
        final = ctx.evaluate() if max_steps else run.before
        if cfg.save_every and max_steps:
            _save_checkpoint(ctx, run)
    finally:
        log.close()
    metrics = _finish(ctx, run, final, mode, rates)
    dist.barrier()
    return metrics


def _task_specs(cfg: SPTConfig) -> tuple[list, list]:
    seen = [get_task(n) for n in task_list(cfg.tasks, "tasks")]
    heldout = [get_task(n) for n in task_list(cfg.heldout, "heldout")]
    require(seen, "--tasks is empty: pass training tasks, e.g. --tasks sst2,rte,qnli")
    names = [t.name for t in seen + heldout]
    dupes = sorted({n for n in names if names.count(n) > 1})
    require(not dupes, f"task(s) {', '.join(dupes)} appear twice in --tasks/--heldout: list each once, "
                       f"held-out tasks only under --heldout")
    check_heads(cfg.head, [t.name for t in heldout])
    return seen, heldout


def _load_suite(cfg: SPTConfig, seen: list, heldout: list, backbone, prompt_length: int) -> TaskSuite:
    train = [load_examples(t, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed) for t in seen]
    evals = [load_examples(t, "eval", cfg.data_dir, limit=cfg.eval_limit, seed=cfg.seed)
             if (cfg.eval_seen or i >= len(seen)) else [] for i, t in enumerate(seen + heldout)]
    for t, examples in zip(seen, train):
        require(len(examples) > 0, f"task {t.name} has no training examples: check --data_dir")
    return TaskSuite.build(seen + heldout, backbone.tokenizer, backbone.family, cfg.max_length, prompt_length,
                           train + [[] for _ in heldout], evals, backbone.family is Family.CAUSAL,
                           cfg.instruction_in_input)


def _mixture(cfg: SPTConfig, suite: TaskSuite, num_seen: int) -> tuple[MixturePlan, list[float]]:
    seen = suite.tasks[:num_seen]
    sizes = [len(t.train) for t in seen]
    rates = mixing_rates(sizes, cfg.mixing, cfg.mixing_temperature, cfg.mixing_cap)
    plan = MixturePlan(sizes, [len(t.instruction_ids) for t in seen], rates, cfg.batch_size, cfg.seed)
    return plan, rates


def _engine(model: SPTModel, cfg: SPTConfig, ds_config: dict):
    """(DeepSpeed engine, scheduler) over the model's trainable parameters."""
    optimizer = ds_setup.build_optimizer(cfg.optimizer, _param_groups(model, cfg), cfg.lr, cfg.weight_decay)
    scheduler = ds_setup.build_scheduler(cfg.scheduler, optimizer, cfg.warmup_steps, cfg.max_steps)
    engine, _, scheduler = ds_setup.initialize_engine(model, ds_config, optimizer, scheduler)
    return engine, scheduler


def _build_model(cfg: SPTConfig, backbone, bank: BankConfig, seen: list, heldout: list, start) -> SPTModel:
    """The SPT model, initialized (from --init_bank when given) and with the right parameters trainable."""
    model = build_spt_model(backbone, bank, seen + heldout, cfg.head)
    instructions = [text for t in seen for text in t.instructions]
    init_spt_prompt(model.prompt, cfg.init, cfg.key_init, backbone.tokenizer, instructions, cfg.seed)
    if start is not None:
        _start_from_bank(model, start, [t.name for t in seen], cfg.init_bank)
    if cfg.freeze_bank:
        for p in [model.prompt.bank.keys, model.prompt.bank.values, *model.prompt.query.parameters()]:
            p.requires_grad_(False)
    if cfg.train_backbone:
        for p in backbone.model.parameters():
            p.requires_grad_(True)
    require(any(p.requires_grad for p in model.parameters()),
            "nothing to train: --freeze_bank with --task_prompt none and no linear head; drop --freeze_bank")
    return model


def _start_from_bank(model: SPTModel, start, seen: list[str], source: str) -> None:
    """Copy the saved bank (keys, values, query projection) and the prompts of tasks it was trained on."""
    tensors, meta = start
    prompt_tensors = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    bank_only = {k: v for k, v in prompt_tensors.items() if not k.startswith("task_prompts.")}
    load_state(model.prompt.bank, {k[len("bank."):]: v for k, v in bank_only.items() if k.startswith("bank.")},
               source)
    load_state(model.prompt.query, {k[len("query."):]: v for k, v in bank_only.items() if k.startswith("query.")},
               source)
    saved = prompt_tensors.get("task_prompts.weight")
    table = model.prompt.task_prompts
    if saved is None or table is None or saved.shape[1:] != table.weight.shape[1:]:
        return
    with torch.no_grad():
        if table.weight.shape[0] == 1 or meta.get("task_prompt") == "shared":
            table.weight.copy_(saved[:1].expand_as(table.weight))
            return
        for row, name in enumerate(seen):
            if name in meta.get("tasks", []):
                table.weight[row].copy_(saved[meta["tasks"].index(name)])


def _param_groups(model: SPTModel, cfg: SPTConfig) -> list[dict]:
    """SPT parameters at --lr; backbone parameters (with --train_backbone) at --backbone_lr."""
    require(cfg.backbone_lr > 0, f"--backbone_lr must be > 0, got {cfg.backbone_lr}")
    spt, backbone = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith("backbone.") else spt).append(p)
    groups = [{"params": spt, "lr": cfg.lr}] if spt else []
    return groups + ([{"params": backbone, "lr": cfg.backbone_lr}] if backbone else [])


def _train_loop(ctx: _Context, run: RunState, log: RunLogger) -> None:
    cfg = ctx.cfg
    world, me = dist.world_size(), dist.rank()

    def micro_batches(step: int):
        samples = ctx.plan.global_batch_at(step)
        for micro in micro_batches_of(samples, world, me, cfg.grad_accum, ctx.suite.length):
            cpu_batch = ctx.suite.collate(micro)
            yield cpu_batch, float(cpu_batch["attention_mask"].sum()) + ctx.bank.prompt_length * len(micro)

    def on_eval() -> None:
        results = ctx.evaluate()
        run.history.append({"step": run.step, "results": results})
        _log_eval(log, run.step, results)

    train_steps(ctx.engine, run, ctx.max_steps, cfg, log, micro_batches,
                on_log=lambda loss_sum, tokens, elapsed: log_window(ctx.engine, ctx.scheduler, cfg, run, log,
                                                                   loss_sum, tokens, elapsed, ctx.out),
                on_eval=on_eval, on_save=lambda: _save_checkpoint(ctx, run))




def _log_eval(log: RunLogger, step: int, results: dict) -> None:
    log.scalars(step, {f"{name}/accuracy": r["accuracy"] for name, r in results.items()}, prefix="eval")
    log.message(f"step {step}: " + ", ".join(f"{n} {r['accuracy']:.4f}" for n, r in results.items()))


def _save_checkpoint(ctx: _Context, run: RunState) -> None:
    save_run_checkpoint(ctx.engine, ctx.scheduler, ctx.cfg, run, ctx.out, {"before": run.before})


def _full_tensor(engine, p: nn.Parameter) -> torch.Tensor:
    """The full fp32 value of `p` (collective under ZeRO-3: call on every rank)."""
    if p.requires_grad:
        return ckpt.full_param(engine, p)
    with dist.gathered(p):
        return p.detach().float().cpu().clone()


def _finish(ctx: _Context, run: RunState, final: dict, mode: Mode, rates: list[float]) -> dict:
    """Write bank.safetensors + bank.json (+ backbone.safetensors), metrics.json and spt_eval.json (rank 0)."""
    cfg, model = ctx.cfg, ctx.model
    tensors = {}
    for name, p in model.named_parameters():
        if name.startswith("prompt.") or (name.startswith("head.") and p.requires_grad):
            tensors[name.removeprefix("prompt.")] = _full_tensor(ctx.engine, p)
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise UserError("the trained bank is non-finite: lower --lr; no artifact was written")
    seen = ctx.suite.tasks[:ctx.num_seen]
    heldout = ctx.suite.tasks[ctx.num_seen:]
    summary = _summary(final)
    meta = dict(ctx.bank.to_json(), **ctx.backbone.record(), family=ctx.backbone.family.value, head=cfg.head,
                tasks=[t.spec.name for t in seen], heldout=[t.spec.name for t in heldout],
                instructions={t.spec.name: list(t.spec.instructions) for t in ctx.suite.tasks},
                max_length=cfg.max_length, seed=cfg.seed, init=cfg.init, key_init=cfg.key_init, mode=mode.value,
                steps=run.step, train_backbone=cfg.train_backbone, mixing_rates=rates, metrics=summary,
                instruction_in_input=cfg.instruction_in_input)
    dist.on_rank0(save_bank, ctx.out, tensors, meta)
    if cfg.train_backbone:
        weights = {n: _full_tensor(ctx.engine, p) for n, p in ctx.backbone.model.named_parameters()}
        dist.on_rank0(write_tensors, Path(ctx.out) / BACKBONE_FILE, weights)
    for name, r in final.items():
        r["accuracy_before"] = run.before[name]["accuracy"]
    metrics = dict(summary, mode=mode.value, model=cfg.model, steps=run.step, world_size=dist.world_size(),
                   tokens=run.tokens, results=final, history=run.history, mixing_rates=rates,
                   prompt_length=ctx.bank.prompt_length)
    dist.on_rank0(write_json, os.path.join(ctx.out, "metrics.json"), metrics)
    dist.on_rank0(write_json, os.path.join(ctx.out, EVAL_FILE), _eval_record(ctx.out, cfg.model, final))
    return metrics


# ------------------------------------------------------------------------------------------------ evaluate

class BoundPrompt(nn.Module):
    """The SPT model with every row's task and discrete prompt fixed: (input_ids, attention_mask,
    score_index) -> logits, the call `ds_prompt.engine.evaluate.evaluate` makes."""

    def __init__(self, model: nn.Module, task: int, instruction_ids: list[int]):
        super().__init__()
        self.model, self.task = model, task
        self.register_buffer("instruction_ids", torch.tensor([instruction_ids]), persistent=False)
        self.train(False)

    def forward(self, input_ids, attention_mask, score_index):
        rows = input_ids.shape[0]
        ids = self.instruction_ids.to(input_ids.device).expand(rows, -1)
        task_ids = torch.full((rows,), self.task, dtype=torch.long, device=input_ids.device)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, score_index=score_index,
                          task_ids=task_ids, instruction_ids=ids, instruction_mask=torch.ones_like(ids))


def evaluate_tasks(model: nn.Module, suite: TaskSuite, task_ids: list[int], num_seen: int, batch_size: int,
                   device) -> dict[str, dict]:
    """{task: {accuracy (mean over its discrete prompts), per_instruction, loss, n, seen}}. Collective."""
    results = {}
    for t in task_ids:
        task = suite.tasks[t]
        per = [evaluate(BoundPrompt(model, t, ids), suite.eval_encoded(t, k), batch_size, suite.pad_id,
                        suite.left_pad, device) for k, ids in enumerate(task.instruction_ids)]
        results[task.spec.name] = {
            "accuracy": sum(r["accuracy"] for r in per) / len(per),
            "per_instruction": [r["accuracy"] for r in per],
            "loss": sum(r["loss"] for r in per) / len(per), "n": per[0]["n"], "seen": t < num_seen}
    return results


def _summary(results: dict) -> dict:
    def mean(rows):
        return sum(r["accuracy"] for r in rows) / len(rows) if rows else None
    return {"heldout_mean": mean([r for r in results.values() if not r["seen"]]),
            "seen_mean": mean([r for r in results.values() if r["seen"]])}


def _eval_record(bank: str, model: str, results: dict) -> dict:
    return dict(_summary(results), bank=str(bank), model=model, results=results)


def evaluate_bank(bank: str, tasks: list[str] | None = None, data_dir: str | None = None, limit: int | None = 500,
                  batch_size: int = 64, output_dir: str | None = None, model: str | None = None,
                  dtype: str = "auto") -> dict:
    """Zero-shot (unseen tasks) / in-task (seen tasks) accuracy of a trained bank; writes spt_eval.json into
    `output_dir` (default: the bank folder). Default tasks: the bank's held-out tasks. With `limit`, the
    examples are the seeded subset the training run evaluated (its --seed)."""
    ds_setup.init_distributed()
    spt, backbone, meta, specs, ids = load_trained(bank, tasks, model, dtype)
    cfg = BankConfig.from_json(meta)
    evals = [load_examples(t, "eval", data_dir, limit=limit, seed=meta["seed"]) if i in ids else []
             for i, t in enumerate(specs)]
    suite = TaskSuite.build(specs, backbone.tokenizer, backbone.family, meta["max_length"], cfg.prompt_length,
                            [[] for _ in specs], evals, backbone.family is Family.CAUSAL,
                            meta.get("instruction_in_input", False))
    device = ds_setup.device()
    results = evaluate_tasks(spt.to(device), suite, ids, cfg.num_tasks, batch_size, device)
    out = output_dir or str(Path(bank) if Path(bank).is_dir() else Path(bank).parent)
    dist.on_rank0(ensure_writable_dir, out)
    record = _eval_record(bank, model or meta["backbone"], results)
    dist.on_rank0(write_json, os.path.join(out, EVAL_FILE), record)
    return record


def format_table(results: dict) -> str:
    """A plain-text table: task, seen/held-out, accuracy, accuracy per discrete prompt."""
    lines = [f"{'task':<14}{'kind':<10}{'accuracy':>9}  per prompt"]
    for name, r in results.items():
        per = " ".join(f"{a:.3f}" for a in r["per_instruction"])
        lines.append(f"{name:<14}{'seen' if r['seen'] else 'held-out':<10}{r['accuracy']:>9.4f}  {per}")
    return "\n".join(lines)


__all__ = ["SPTConfig", "Mode", "train", "evaluate_bank", "evaluate_tasks", "load_trained", "format_table",
           "bank_config"]
