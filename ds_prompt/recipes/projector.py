"""The projector training recipe (`ds-prompt transfer projector train`; REFERENCE §1): a `PromptProjector`
(transfer.projector) trained with the TARGET task's loss through the frozen TARGET model, AdamW lr 5e-3, eps 1e-6,
on the shared step loop (checkpoints, resume). With several (source prompt, task) pairs, optimizer steps cycle
through the pairs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ds_prompt import dist
from ds_prompt.builders import load_model_for
from ds_prompt.config import DataArgs, LoopArgs, model_slug
from ds_prompt.data.encoding import BatchPlan, TemplateEncoder, collate
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine import state as ckpt
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.engine.logging import RunLogger
from ds_prompt.engine.loop import LoopState, log_window, save_run_checkpoint, train_steps
from ds_prompt.engine.state import full_param
from ds_prompt.errors import UserError
from ds_prompt.models.backbone import canonical_model
from ds_prompt.models.family import Family
from ds_prompt.transfer.projector import ProjectorConfig, ProjectorObjective, PromptProjector, save_projector
from ds_prompt.transfer.prompt_set import as_list, load_prompt_set


class _PairView(nn.Module):
    """Pair `source` of an objective as a plain model(input_ids, attention_mask, score_index), for `evaluate`."""

    def __init__(self, objective: nn.Module, source: int):
        super().__init__()
        self.objective, self.source = objective, source

    def forward(self, input_ids, attention_mask, score_index):
        return self.objective(input_ids, attention_mask, score_index, source=self.source)


@dataclass
class ProjectorTrainConfig(LoopArgs, DataArgs):
    """`ds-prompt transfer projector train` flags: the shared data and loop groups plus the projector's own.
    prompts/tasks are comma lists: prompt i is projected for task i (one prompt serves every task; no --tasks:
    each prompt's own task)."""
    target_model: str = "minilm"
    prompts: str = ""
    tasks: str = ""
    source_model: str | None = None       # checked against the prompts' recorded backbone
    lr: float = 5e-3
    eps: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    hidden: int = 768
    activation: str = "leaky_relu"        # leaky_relu or tanh
    target_length: int = 0                # 0 = the source prompt length
    head: str = "auto"                    # label_words or similarity (auto: by the target family)
    family: str | None = None
    dtype: str = "auto"
    max_length: int = 128
    deepspeed: str | None = None
    eval_every: int = 0                   # the projector is evaluated before and after training only

    def resolved_output_dir(self, source_model: str) -> str:
        return self.output_dir or str(Path("runs") / f"projector-{model_slug(source_model)}-to-"
                                                      f"{model_slug(self.target_model)}")


@dataclass
class _PairData:
    task: object
    train: list
    eval: list
    plan: object


def _pairs(cfg: ProjectorTrainConfig):
    """[(PromptRef, TaskSpec)] from --prompts / --tasks."""
    refs, tasks = load_prompt_set(cfg.prompts), as_list(cfg.tasks)
    if not tasks:
        tasks = [p.task for p in refs]
        if None in tasks:
            raise UserError("a prompt records no task: pass --tasks T1,T2,... (one per prompt)")
    if len(refs) == 1:
        refs = refs * len(tasks)
    if len(refs) != len(tasks):
        raise UserError(f"{len(refs)} prompts for {len(tasks)} tasks: pass one prompt per task, or one prompt")
    shapes = {tuple(p.tensor.shape) for p in refs}
    if len(shapes) != 1:
        raise UserError(f"source prompts have shapes {sorted(shapes)}: one projector maps one shape")
    for p in refs:
        if cfg.source_model and p.backbone and canonical_model(p.backbone) != canonical_model(cfg.source_model):
            raise UserError(f"prompt {p.path} was trained on {p.backbone}, not --source_model {cfg.source_model}")
    return list(zip(refs, [get_task(t) for t in tasks]))


def _load_pair_data(pairs, backbone, cfg: ProjectorTrainConfig, target_length: int) -> list[_PairData]:
    out = []
    for _, task in pairs:
        encoder = TemplateEncoder(task, backbone.tokenizer, backbone.family, cfg.max_length, target_length)
        train = [encoder.encode(e) for e in load_examples(task, "train", cfg.data_dir, cfg.train_limit, cfg.seed)]
        eval_ = [encoder.encode(e) for e in load_examples(task, "eval", cfg.data_dir, cfg.eval_limit, cfg.seed)]
        out.append(_PairData(task, train, eval_, BatchPlan([len(e.input_ids) for e in train], cfg.batch_size,
                                                           cfg.seed)))
    return out


def _evaluate_pairs(engine, data: list[_PairData], cfg, backbone) -> list[dict]:
    results = []
    for k, d in enumerate(data):
        view = _PairView(engine.module, k).eval()
        r = evaluate(view, d.eval, cfg.eval_batch_size, backbone.tokenizer.pad_token_id,
                     backbone.family is Family.CAUSAL, engine.device)
        results.append({"task": d.task.name, **r})
    return results


def train_projector(cfg: ProjectorTrainConfig) -> dict:
    """Train a projector per `cfg` through the shared step loop (checkpoints every --save_every steps; an
    interrupted run of the same projector resumes); returns metrics (also in <output_dir>/projector.json)."""
    ds_setup.init_distributed()
    pairs = _pairs(cfg)
    source_model = cfg.source_model or pairs[0][0].backbone or "unknown"
    out = cfg.resolved_output_dir(source_model)
    identity = {"source_model": source_model, "target_model": cfg.target_model,
                "prompts": [p.path for p, _ in pairs], "tasks": [t.name for _, t in pairs], "seed": cfg.seed,
                "batch_size": cfg.batch_size, "hidden": cfg.hidden, "activation": cfg.activation,
                "target_length": cfg.target_length, "head": cfg.head, "max_length": cfg.max_length,
                "train_limit": cfg.train_limit, "data_dir": cfg.data_dir}
    return ds_setup.run_in_claimed_folder(out, "projector", identity, cfg.max_steps, cfg.resume, cfg.overwrite,
                                          lambda: _train_projector(cfg, pairs, source_model, out))


def _train_projector(cfg: ProjectorTrainConfig, pairs, source_model: str, out: str) -> dict:
    ds_setup.start_run(out, cfg.seed)
    backbone = load_model_for(cfg.target_model, cfg.family, cfg.dtype)
    sources = torch.stack([p.tensor for p, _ in pairs])
    config = ProjectorConfig(source_length=sources.shape[1], source_dim=sources.shape[2],
                             target_dim=backbone.d_model, target_length=cfg.target_length, hidden=cfg.hidden,
                             activation=cfg.activation, source_model=source_model, target_model=cfg.target_model,
                             target_family=backbone.family.value, target_record=backbone.record(),
                             tasks=[t.name for _, t in pairs], max_length=cfg.max_length)
    objective = ProjectorObjective(backbone, PromptProjector(config), sources, [t for _, t in pairs], cfg.head)
    config.target_head = "label_words" if objective.transform is not None else "similarity"
    data = _load_pair_data(pairs, backbone, cfg, config.target_length)
    resumed = ckpt.load_latest(out) if cfg.resume else None
    if resumed:
        ckpt.restore_params(objective, resumed[0])

    ds_config = ds_setup.ds_config_for(cfg.deepspeed, cfg, cfg.grad_clip, cfg.dtype)
    optimizer = torch.optim.AdamW(objective.projector.parameters(), lr=cfg.lr, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = ds_setup.build_scheduler("constant", optimizer, 0, cfg.max_steps)
    engine, _, scheduler = ds_setup.initialize_engine(objective, ds_config, optimizer, scheduler)
    run, before = LoopState(), None
    if resumed:
        tensors, meta = resumed
        ckpt.restore_training(engine, scheduler, tensors, meta)
        run = LoopState(step=meta["step"], history=meta["history"], tokens=meta.get("tokens", 0.0))
        before = meta.get("before")

    log = RunLogger(os.path.join(out, "tb"), cfg.max_steps, run.step, cfg.progress, getattr(engine, "monitor", None))
    if resumed:
        log.message(f"resuming the projector at step {run.step}")
    try:
        engine.eval()  # no dropout anywhere: the backbone is frozen and the projector has none
        if before is None:
            before = _evaluate_pairs(engine, data, cfg, backbone)
        extra = {"before": before}
        batches = _pair_batches(data, cfg, backbone, config.target_length)

        def on_log(loss_sum, tokens, elapsed):
            log_window(engine, scheduler, cfg, run, log, loss_sum, tokens, elapsed, out)
        train_steps(engine, run, cfg.max_steps, cfg, log, batches, on_log=on_log, on_eval=lambda: None,
                    on_save=lambda: save_run_checkpoint(engine, scheduler, cfg, run, out, extra))
        after = _evaluate_pairs(engine, data, cfg, backbone)
        if cfg.save_every:
            save_run_checkpoint(engine, scheduler, cfg, run, out, extra)
    finally:
        log.close()
    prefix = "prompted.prompt.projector."
    state = {n[len(prefix):]: full_param(engine, p) for n, p in objective.named_parameters()
             if n.startswith(prefix)}
    metrics = {"steps": cfg.max_steps, "before": before, "after": after,
               "accuracy": sum(r["accuracy"] for r in after) / len(after),
               "source_prompts": [p.path for p, _ in pairs]}
    dist.on_rank0(save_projector, out, config, state, {"metrics": metrics})
    dist.barrier()
    return dict(metrics, output_dir=out)


def _pair_batches(data: list[_PairData], cfg: ProjectorTrainConfig, backbone, prompt_length: int):
    """The shared loop's micro-batches: step s trains pair s % n on that pair's next global batch (this rank's
    share); each batch names its pair in `source`."""
    world, me, pad_id = dist.world_size(), dist.rank(), backbone.tokenizer.pad_token_id
    left = backbone.family is Family.CAUSAL
    epochs: dict[int, tuple] = {}

    def micro_batches(step: int):
        k = step % len(data)
        pair = data[k]
        epoch, index = divmod(step // len(data), pair.plan.batches_per_epoch)
        if epochs.get(k, (None,))[0] != epoch:
            epochs[k] = (epoch, pair.plan.epoch(epoch))
        for micro in pair.plan.micro_batches(epochs[k][1][index], world, me, cfg.grad_accum):
            batch = collate([pair.train[i] for i in micro], pad_id, left)
            batch["source"] = torch.tensor(k)
            tokens = float(batch["attention_mask"].sum()) + prompt_length * len(micro)
            yield batch, tokens
    return micro_batches
