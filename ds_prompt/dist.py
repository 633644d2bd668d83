"""Process-group helpers: rank queries, rank-0 side effects, ZeRO-3 parameter gathering.

Rule: collective calls (barriers, gathers) are never placed inside a rank-0-only branch; rank-0-only side
effects (files, logs) go through `on_rank0`.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as torch_dist


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def on_rank0(fn, *args, **kwargs):
    """Run `fn` on rank 0 only (a side effect: writing a file, logging); other ranks get None."""
    return fn(*args, **kwargs) if is_rank0() else None


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        torch_dist.all_reduce(t)
    return t


def is_zero3_param(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


@contextlib.contextmanager
def gathered(params, modifier_rank: int | None = None):
    """Full values of ZeRO-3 partitioned `params` inside the block (a no-op for ordinary tensors).

    Collective under ZeRO-3: every rank must enter it. With `modifier_rank`, that rank's in-place edits are
    re-partitioned on exit.
    """
    params = [p for p in (params if isinstance(params, (list, tuple)) else [params]) if is_zero3_param(p)]
    if not params:
        yield
        return
    import deepspeed
    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
