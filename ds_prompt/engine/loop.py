"""The optimizer-step loop shared by the recipes (prompt tuning, SPT).

Per step: forward + backward of each of this rank's micro-batches through the DeepSpeed engine (which averages
gradients across ranks and steps the optimizer at the accumulation boundary), then the periodic log, eval and
checkpoint callbacks. The loss is summed on the device and only read at log steps (no per-step host sync).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ds_prompt import dist
from ds_prompt.config import LoopArgs, config_dict
from ds_prompt.engine import state as ckpt
from ds_prompt.engine.progress import check_stop
from ds_prompt.errors import UserError
from ds_prompt.faults import fault_point

MicroBatches = Callable[[int], Iterable[tuple[dict, float]]]  # step -> (cpu batch with "labels", tokens)


@dataclass
class LoopState:
    """What the loop carries between steps and a checkpoint restores; recipes add their pre-training eval."""
    step: int = 0
    history: list = field(default_factory=list)
    tokens: float = 0.0


def train_steps(engine, run, max_steps: int, cfg: LoopArgs, log, micro_batches: MicroBatches,
                on_log: Callable, on_eval: Callable[[], None], on_save: Callable[[], None]) -> None:
    """Run steps `run.step` .. `max_steps`; the loop group `cfg` gives grad_accum, log_every, eval_every,
    save_every (every recipe config composes `config.LoopArgs`).

    `on_log(loss_sum, tokens, elapsed_s)` logs one window (see `window_scalars`).
    """
    loss_sum, tokens, t0 = torch.zeros((), device=engine.device), 0.0, time.perf_counter()
    while run.step < max_steps:
        check_stop()
        for cpu_batch, n_tokens in micro_batches(run.step):
            tokens += n_tokens
            batch = {k: v.to(engine.device, non_blocking=True) for k, v in cpu_batch.items()}
            labels = batch.pop("labels")
            loss = F.cross_entropy(engine(**batch).float(), labels)
            engine.backward(loss)
            fault_point("mid_step", run.step + 1)
            if engine.is_gradient_accumulation_boundary():
                _unpartitioned_grad_norm(engine)
            engine.step()
            loss_sum += loss.detach() / cfg.grad_accum
        run.step += 1
        log.advance(1)
        if run.step % cfg.log_every == 0 or run.step == max_steps:
            on_log(loss_sum, tokens, time.perf_counter() - t0)
            loss_sum, tokens, t0 = torch.zeros((), device=engine.device), 0.0, time.perf_counter()
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < max_steps:
            on_eval()
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < max_steps:
            on_save()
            fault_point("after_checkpoint", run.step)


def _unpartitioned_grad_norm(engine) -> None:
    """Remember the L2 norm of the accumulated gradients before clipping, where they sit on the parameters
    (ZeRO-0; under ZeRO 1-3 they are partitioned and DeepSpeed keeps its own global norm). It stays on the
    device: no host sync until a log window reads it."""
    grads = [p.grad for p in engine.module.parameters() if p.requires_grad and p.grad is not None]
    if grads:
        engine._ds_prompt_grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def window_scalars(engine, scheduler, cfg: LoopArgs, step: int, loss_sum: torch.Tensor, tokens: float, elapsed: float,
                   out: str) -> tuple[dict, float]:
    """Reduce one log window across ranks (collective): (scalars, tokens of all ranks). The loss is the mean
    per step over the window; a non-finite loss is a UserError (the last good checkpoint is kept)."""
    window = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
    stats = dist.all_reduce_sum(torch.tensor([loss_sum.item(), tokens], dtype=torch.float64))
    loss = stats[0].item() / dist.world_size() / window
    if not math.isfinite(loss):
        raise UserError(f"training loss became {loss} by step {step} (lr {cfg.lr}): lower --lr or check "
                        f"the data; the last good checkpoint (if any) in {out}/checkpoints is kept")
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is None:  # ZeRO-0 keeps no global norm: the loop measured it before the step
        grad_norm = getattr(engine, "_ds_prompt_grad_norm", None)
    return {"loss": loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": stats[1].item() / elapsed,
            "s_per_step": elapsed / window,
            "grad_norm": float(grad_norm) if grad_norm is not None else None}, stats[1].item()


def log_window(engine, scheduler, cfg: LoopArgs, run: LoopState, log, loss_sum: torch.Tensor, tokens: float,
               elapsed: float, out: str, extra: dict | None = None) -> None:
    """Reduce one log window (collective; see `window_scalars`), count its tokens into `run`, and write the
    scalars (plus the recipe's `extra` ones) to TensorBoard and the progress bar."""
    values, all_tokens = window_scalars(engine, scheduler, cfg, run.step, loss_sum, tokens, elapsed, out)
    values.update(extra or {})
    run.tokens += all_tokens
    log.scalars(run.step, values)
    log.advance(0, loss=values["loss"], tok_s=values["tokens_per_s"])


def save_run_checkpoint(engine, scheduler, cfg: LoopArgs, run: LoopState, out: str, meta: dict) -> None:
    """Consolidate the trainable state (collective), refuse non-finite parameters, write it atomically from
    rank 0. `meta`: the recipe's own entries besides history, tokens, world size and config."""
    tensors, full_meta = ckpt.gather_state(engine, scheduler, run.step, dict(
        meta, history=run.history, tokens=run.tokens, world_size=dist.world_size(), config=config_dict(cfg)))
    if not all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("param/")):
        raise UserError(f"trainable parameters became non-finite by step {run.step}: lower --lr "
                        f"(the previous checkpoint is kept)")
    dist.on_rank0(ckpt.save_checkpoint, out, tensors, full_meta, cfg.keep_checkpoints)
    dist.barrier()
