"""The optimizer-step loop shared by the recipes (prompt tuning, SPT).

Per step: forward + backward of each of this rank's micro-batches through the DeepSpeed engine (which averages
gradients across ranks and steps the optimizer at the accumulation boundary), then the periodic log, eval and
checkpoint callbacks. The loss is summed on the device and only read at log steps (no per-step host sync).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ds_prompt.faults import fault_point

MicroBatches = Callable[[int], Iterable[tuple[dict, float]]]  # step -> (cpu batch with "labels", tokens)


def train_steps(engine, run, max_steps: int, cfg, log, micro_batches: MicroBatches,
                on_log: Callable, on_eval: Callable[[], None], on_save: Callable[[], None]) -> None:
    """Run steps `run.step` .. `max_steps`; `cfg` provides grad_accum, log_every, eval_every, save_every.

    `on_log(loss_sum, tokens, t0)` reduces and logs one window and returns fresh (loss_sum, tokens, t0).
    """
    loss_sum, tokens, t0 = torch.zeros((), device=engine.device), 0.0, time.perf_counter()
    while run.step < max_steps:
        for cpu_batch, n_tokens in micro_batches(run.step):
            tokens += n_tokens
            batch = {k: v.to(engine.device, non_blocking=True) for k, v in cpu_batch.items()}
            labels = batch.pop("labels")
            loss = F.cross_entropy(engine(**batch).float(), labels)
            engine.backward(loss)
            fault_point("mid_step", run.step + 1)
            engine.step()
            loss_sum += loss.detach() / cfg.grad_accum
        run.step += 1
        log.advance(1)
        if run.step % cfg.log_every == 0 or run.step == max_steps:
            loss_sum, tokens, t0 = on_log(loss_sum, tokens, t0)
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < max_steps:
            on_eval()
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < max_steps:
            on_save()
            fault_point("after_checkpoint", run.step)
