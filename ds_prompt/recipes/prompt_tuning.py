"""The prompt-tuning recipe: config -> builders -> DeepSpeed engine -> loop -> artifacts.

Read top to bottom: `train` sets up, `_train_loop` runs the steps. Every rank runs the same code; only
rank 0 writes files. Per optimizer step, a GLOBAL batch (the same examples at any world size) is split into
world_size x grad_accum micro-batches; DeepSpeed averages gradients, so the update equals the one-process
update on the whole batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ds_prompt import dist
from ds_prompt.artifacts import save_prompt
from ds_prompt.builders import build_prompted, load_model_for
from ds_prompt.config import InitSpec, TrainConfig, config_dict, write_config_yaml
from ds_prompt.data.encoding import BatchPlan, collate
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task, task_record
from ds_prompt.engine import progress
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine import state as ckpt
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.engine.logging import RunLogger
from ds_prompt.engine.loop import LoopState, log_window, save_run_checkpoint, train_steps
from ds_prompt.engine.run_folder import backbone_fingerprint, data_fingerprint
from ds_prompt.errors import UserError
from ds_prompt.io import write_json
from ds_prompt.models.checkpointing import enable_activation_checkpointing
from ds_prompt.models.family import Family
from ds_prompt.recipes.inference import eval_subset
from ds_prompt.transfer.library_index import resolve_library_init


@dataclass
class RunState(LoopState):
    accuracy_before: float | None = None


def train(cfg: TrainConfig, prompt_override: torch.Tensor | None = None, model_transform=None) -> dict:
    """Train a soft prompt per `cfg`; returns the final metrics (also in <output_dir>/metrics.json).

    `prompt_override` (a [L, d] tensor) replaces the init spec (transfer-init). `model_transform(backbone)`
    edits the frozen backbone in place before the engine is built (FPT partial models). The output folder is
    claimed first (`engine.run_folder`): locked, and resumed only if it holds this same run.
    """
    task = get_task(cfg.task)
    ds_setup.init_distributed()
    identity = train_identity(cfg, task, prompt_override is not None)
    return ds_setup.run_in_claimed_folder(cfg.resolved_output_dir(), "train", identity, cfg.max_steps, cfg.resume,
                                          cfg.overwrite, lambda: _train(cfg, task, prompt_override, model_transform))


def train_identity(cfg: TrainConfig, task, init_tensor: bool = False) -> dict:
    """What a resumed run must share with the run in its folder (recorded in run.json)."""
    return {"model": cfg.model, "backbone": backbone_fingerprint(cfg.model), "task": task.name,
            "data": data_fingerprint(task, cfg.data_dir), "seed": cfg.seed, "prompt_length": cfg.prompt_length,
            "batch_size": cfg.batch_size, "init": "tensor" if init_tensor else cfg.init, "head": cfg.head,
            "family": cfg.family, "max_length": cfg.max_length, "train_limit": cfg.train_limit,
            "init_state": cfg.init_state}


def _resolved_init(init):
    """`--init library:best|<entry>` names a prompt-library entry: the file it resolves to when the run starts
    (prompt.json records it as init_resolved); any other spec is returned as is."""
    if isinstance(init, str) and InitSpec.parse(init).kind == "library":
        return "file:" + resolve_library_init(init)
    return init


def _train(cfg: TrainConfig, task, prompt_override, model_transform) -> dict:
    out = ds_setup.start_run(cfg.resolved_output_dir(), cfg.seed)
    dist.on_rank0(write_config_yaml, out, cfg)
    train_examples = load_examples(task, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed)
    eval_examples = load_examples(task, "eval", cfg.data_dir, limit=cfg.eval_limit, seed=cfg.seed)
    ds_config = ds_setup.ds_config_for(cfg.deepspeed, cfg, cfg.grad_clip, cfg.dtype)
    with ds_setup.sharded_loading(ds_config):  # ZeRO-3: weights are partitioned as they load
        backbone = load_model_for(cfg.model, cfg.family, cfg.dtype, cfg.quantization, cfg.attn_implementation)
    if model_transform is not None:
        model_transform(backbone)
    resumed = _starting_state(cfg, out)
    init = prompt_override if prompt_override is not None else _resolved_init(cfg.init)
    built = build_prompted(backbone, task, cfg.prompt_length, cfg.max_length, cfg.head, init, cfg.seed)
    if resumed:
        ckpt.restore_params(built.model, resumed[0])
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(backbone.model)
    built.model.shortcuts = cfg.shortcuts

    train_enc = [built.encoder.encode(e) for e in train_examples]
    eval_enc = [built.encoder.encode(e) for e in eval_examples]
    plan = BatchPlan([len(e.input_ids) for e in train_enc], cfg.batch_size, cfg.seed, cfg.bucket)

    trainable = [p for p in built.model.parameters() if p.requires_grad]
    optimizer = ds_setup.build_optimizer(cfg.optimizer, trainable, cfg.lr, cfg.weight_decay)
    scheduler = ds_setup.build_scheduler(cfg.scheduler, optimizer, cfg.warmup_steps,
                                         cfg.schedule_steps or cfg.max_steps)
    engine, _, scheduler = ds_setup.initialize_engine(built.model, ds_config, optimizer, scheduler)

    run = RunState()
    if resumed and not (cfg.reset_optimizer and resumed[1].get("from_init_state")):
        tensors, meta = resumed
        ckpt.restore_training(engine, scheduler, tensors, meta)
        run = RunState(step=meta["step"], history=meta["history"], accuracy_before=meta["accuracy_before"],
                       tokens=meta.get("tokens", 0.0))

    progress.track(out, run)
    ctx = _LoopContext(cfg, out, engine, scheduler, plan, train_enc, eval_enc, built, backbone)
    ctx.init_resolved = init if isinstance(init, str) and init != cfg.init else None
    log = RunLogger(os.path.join(out, "tb"), cfg.max_steps, run.step, cfg.progress, getattr(engine, "monitor", None))
    if resumed:
        log.message(f"starting from {resumed[1]['source']} at step {run.step}")
    try:
        if run.accuracy_before is None:
            run.accuracy_before = ctx.evaluate()["accuracy"]
            log.scalars(0, {"accuracy": run.accuracy_before}, prefix="eval")
        _train_loop(ctx, run, log)
        final = ctx.evaluate()
        log.scalars(run.step, final, prefix="eval")  # TensorBoard ends on the accuracy metrics.json reports
        log.hparams(config_dict(cfg), {"accuracy": final["accuracy"], "accuracy_before": run.accuracy_before,
                                       "f1": final["f1"], "matthews": final["matthews"]})
        if cfg.save_every:
            _save_checkpoint(ctx, run)
    finally:
        log.close()
    metrics = _finish(ctx, run, final, task)
    dist.barrier()
    return metrics


def _starting_state(cfg: TrainConfig, out: str):
    """(tensors, meta) to start from: this run's own latest checkpoint (resume) first, else --init_state's."""
    own = ckpt.load_latest(out) if cfg.resume else None
    if own:
        own[1]["source"] = f"{out}/{ckpt.CKPT_DIR}"
        return own
    if not cfg.init_state:
        return None
    seed = ckpt.load_latest(cfg.init_state)
    if seed is None:
        raise UserError(f"--init_state {cfg.init_state} has no checkpoints/latest: pass a finished run's "
                        f"--output_dir (trained with --save_every > 0)")
    seed[1].update(source=f"{cfg.init_state}/{ckpt.CKPT_DIR}", from_init_state=True)
    return seed


@dataclass
class _LoopContext:
    cfg: TrainConfig
    out: str
    engine: object
    scheduler: object
    plan: BatchPlan
    train_enc: list
    eval_enc: list
    built: object
    backbone: object
    init_resolved: str | None = None  # the file `--init library:...` chose (prompt.json records it)

    @property
    def left_pad(self) -> bool:
        return self.backbone.family is Family.CAUSAL

    def evaluate(self) -> dict:
        return evaluate(self.engine, self.eval_enc, self.cfg.eval_batch_size, self.backbone.tokenizer.pad_token_id,
                        self.left_pad, self.engine.device)


def _train_loop(ctx: _LoopContext, run: RunState, log: RunLogger) -> None:
    cfg, plan = ctx.cfg, ctx.plan
    world, me = dist.world_size(), dist.rank()
    pad_id = ctx.backbone.tokenizer.pad_token_id
    epoch_cache: dict[int, list] = {}

    def micro_batches(step: int):
        epoch, index = divmod(step, plan.batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = plan.epoch(epoch)
        for micro in plan.micro_batches(epoch_cache[epoch][index], world, me, cfg.grad_accum):
            n_tokens = sum(len(ctx.train_enc[i].input_ids) for i in micro) + cfg.prompt_length * len(micro)
            yield collate([ctx.train_enc[i] for i in micro], pad_id, ctx.left_pad), n_tokens

    def on_eval() -> None:
        result = ctx.evaluate()
        run.history.append({"step": run.step, **result})
        log.scalars(run.step, result, prefix="eval")
        log.message(f"step {run.step}: eval accuracy {result['accuracy']:.4f}")

    ctx.engine.train()  # PromptedModel.train keeps the frozen backbone in eval mode (no dropout)
    train_steps(ctx.engine, run, cfg.max_steps, cfg, log, micro_batches,
                on_log=lambda loss_sum, tokens, elapsed: _log_train(ctx, run, log, loss_sum, tokens, elapsed),
                on_eval=on_eval, on_save=lambda: _save_checkpoint(ctx, run))


def _log_train(ctx, run, log, loss_sum, tokens, elapsed) -> None:
    prompt_norm = ckpt.full_param(ctx.engine, ctx.built.model.prompt.weight).norm().item()  # collective
    log_window(ctx.engine, ctx.scheduler, ctx.cfg, run, log, loss_sum, tokens, elapsed, ctx.out,
               extra={"prompt_norm": prompt_norm})


def _save_checkpoint(ctx: _LoopContext, run: RunState) -> None:
    save_run_checkpoint(ctx.engine, ctx.scheduler, ctx.cfg, run, ctx.out, {"accuracy_before": run.accuracy_before})


def _finish(ctx: _LoopContext, run: RunState, final: dict, task) -> dict:
    """Write prompt.safetensors + prompt.json and metrics.json (rank 0)."""
    cfg, model = ctx.cfg, ctx.built.model
    tensors = {n: ckpt.full_param(ctx.engine, p) for n, p in model.named_parameters() if p.requires_grad}
    prompt = tensors.pop("prompt.weight")
    if not torch.isfinite(prompt).all():
        raise UserError("the trained prompt is non-finite: lower --lr; no artifact was written")
    metrics = {"task": task.name, "model": cfg.model, "steps": run.step, "accuracy_before": run.accuracy_before,
               "accuracy": final["accuracy"], "eval_loss": final["loss"], "eval_n": final["n"],
               "metric": task.metric, "f1": final["f1"], "matthews": final["matthews"],
               "world_size": dist.world_size(), "history": run.history, "tokens": run.tokens,
               "eval_subset": eval_subset(cfg.eval_limit, cfg.seed)}
    meta = {**ctx.backbone.record(), "family": ctx.backbone.family.value, "task": task.name,
            "label_words": [list(w) for w in task.label_words], "labels": list(task.labels),
            "template": task.template, "task_spec": task_record(task),
            "head": type(model.head).__name__, "init": cfg.init if isinstance(cfg.init, str) else "tensor",
            "steps": run.step, "metrics": {"accuracy": final["accuracy"], "accuracy_before": run.accuracy_before,
                                           "f1": final["f1"], "matthews": final["matthews"], "metric": task.metric},
            "max_length": cfg.max_length, "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "quantization": cfg.quantization, "prompt_length": cfg.prompt_length,
            "data_dir": os.path.abspath(cfg.data_dir) if cfg.data_dir else None}
    if ctx.init_resolved:
        meta["init_resolved"] = ctx.init_resolved  # which library prompt --init library:... chose
    head_tensors = {f"head.{n[len('head.'):]}": t for n, t in tensors.items() if n.startswith("head.")}
    dist.on_rank0(save_prompt, ctx.out, prompt, meta, head_tensors)
    dist.on_rank0(write_json, os.path.join(ctx.out, "metrics.json"), metrics)
    return metrics
