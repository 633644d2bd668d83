"""Consolidated trainable state: prompt (+ head), optimizer moments, schedule, step, RNG and data position.

The trainable state of prompt tuning is tiny, so it is saved *consolidated* (full tensors, one file, from
rank 0) rather than as per-rank ZeRO shards: a run resumes exactly at any world size and any ZeRO stage.

Layout under <output_dir>/checkpoints/:
  step_000100/state.safetensors   param/<name>, opt/<name>/<key>, rng/torch
  step_000100/state.json          step, schedule, data position, RNG (python/numpy), config, metrics
  latest                          name of the newest complete checkpoint (written last, atomically)
A checkpoint directory is written under a temporary name and renamed when complete, so a crash at any
point leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ds_prompt.dist import is_rank0
from ds_prompt.errors import UserError
from ds_prompt.faults import fault_point
from ds_prompt.io import atomic_path

CKPT_DIR, LATEST = "checkpoints", "latest"


def _optimizer_parts(engine):
    """(flat fp32 tensors the torch optimizer steps, that torch optimizer) for ZeRO stage 0/1/2/3."""
    opt = engine.optimizer
    if isinstance(opt, torch.optim.Optimizer):  # stage 0, fp32: the client optimizer itself
        return [p for g in opt.param_groups for p in g["params"]], opt
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # stage 3
        return list(opt.fp32_partitioned_groups_flat), opt.optimizer
    return list(opt.single_partition_of_fp32_groups), opt.optimizer  # stage 1/2


def materialize_optimizer_state(engine) -> None:
    """Create the optimizer's lazily-built state (moments) with one zero-gradient, zero-lr step, which
    leaves every parameter unchanged, so that a checkpoint's moments can be written into it."""
    flats, inner = _optimizer_parts(engine)
    missing = [p for p in flats if not inner.state.get(p)]
    if not missing:
        return
    saved = [(g["params"], g["lr"]) for g in inner.param_groups]
    for g in inner.param_groups:
        g["params"], g["lr"] = [], 0.0
    inner.param_groups[0]["params"] = missing
    grads = [p.grad for p in missing]
    for p in missing:
        p.grad = torch.zeros_like(p)
    inner.step()
    for p, g in zip(missing, grads):
        p.grad = g
    for g, (params, lr) in zip(inner.param_groups, saved):
        g["params"], g["lr"] = params, lr
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def full_param(engine, p) -> torch.Tensor:
    """The full fp32 value of trainable `p` (gathered from ZeRO partitions; collective under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_fp32_param
    full = None if isinstance(engine.optimizer, torch.optim.Optimizer) else safe_get_full_fp32_param(p)
    return (p.detach() if full is None else full).float().cpu().clone()


def _full_opt_state(engine, p) -> dict[str, torch.Tensor]:
    """Per-element optimizer state of `p` at full shape (collective under ZeRO-3: call on every rank)."""
    from deepspeed.utils import safe_get_full_optimizer_state
    flats, inner = _optimizer_parts(engine)
    if isinstance(engine.optimizer, torch.optim.Optimizer):
        return {k: v.detach().cpu().clone() for k, v in inner.state.get(p, {}).items() if torch.is_tensor(v)}
    keys = sorted({k for f in flats for k, v in inner.state.get(f, {}).items()
                   if torch.is_tensor(v) and v.shape == f.shape})
    return {k: safe_get_full_optimizer_state(p, k).float().cpu().clone() for k in keys}


def optimizer_step_count(engine) -> int:
    _, inner = _optimizer_parts(engine)
    steps = [s["step"] for s in inner.state.values() if "step" in s]
    return int(steps[0]) if steps else 0


def gather_state(engine, scheduler, step: int, extra: dict) -> tuple[dict, dict]:
    """(tensors, json meta) of the full trainable state. Collective: call on every rank."""
    tensors, opt_step = {}, optimizer_step_count(engine)
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        tensors[f"param/{name}"] = full_param(engine, p)
        for key, value in _full_opt_state(engine, p).items():
            if key != "step":
                tensors[f"opt/{name}/{key}"] = value
    tensors["rng/torch"] = torch.get_rng_state()
    meta = dict(extra, step=step, optimizer_step=opt_step, scheduler=scheduler.state_dict() if scheduler else None,
                rng_python=_jsonable(random.getstate()), rng_numpy=_jsonable(np.random.get_state()))
    meta["scheduler"] = _jsonable(meta["scheduler"])
    return tensors, meta


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def save_checkpoint(output_dir: str, tensors: dict, meta: dict, keep: int) -> Path | None:
    """Rank 0 writes step_<N>/ atomically, then points `latest` at it, then prunes old ones."""
    if not is_rank0():
        return None
    root = Path(output_dir) / CKPT_DIR
    name = f"step_{meta['step']:07d}"
    for stale in root.glob(".*.tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    with atomic_path(root / name) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=str))
        fault_point("before_rename", meta["step"])
    with atomic_path(root / LATEST) as tmp:
        tmp.write_text(name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def load_latest(output_dir: str) -> tuple[dict, dict] | None:
    """(tensors, meta) of the newest complete checkpoint, or None."""
    root = Path(output_dir) / CKPT_DIR
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    try:
        return load_file(str(path / "state.safetensors")), json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}): delete {root} to start over, "
                        f"or pass --resume false") from None


def restore_params(model: torch.nn.Module, tensors: dict) -> None:
    """Write saved trainable params into `model` (before deepspeed.initialize, so every rank starts equal)."""
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("param/"):
            name = key[len("param/"):]
            if name not in params or params[name].shape != value.shape:
                raise UserError(f"checkpoint tensor {name} {tuple(value.shape)} does not fit this model: "
                                f"the run's flags changed; use a new --output_dir or --resume false")
            params[name].data.copy_(value.to(params[name].dtype))


def restore_optimizer(engine, tensors: dict, meta: dict) -> None:
    """Write saved moments and the step count into the engine's optimizer. Collective: every rank."""
    from deepspeed.utils import safe_set_full_optimizer_state
    materialize_optimizer_state(engine)
    flats, inner = _optimizer_parts(engine)
    stage0 = isinstance(engine.optimizer, torch.optim.Optimizer)
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        prefix = f"opt/{name}/"
        for key in [k for k in tensors if k.startswith(prefix)]:
            value = tensors[key]
            if stage0:
                inner.state[p][key[len(prefix):]] = value.to(p.device).clone()
            else:
                safe_set_full_optimizer_state(p, value.to(p.device), key[len(prefix):])
    for f in flats:
        st = inner.state.get(f, {})
        if "step" in st:
            st["step"] = (torch.tensor(float(meta["optimizer_step"]), dtype=st["step"].dtype)
                          if torch.is_tensor(st["step"]) else meta["optimizer_step"])


def restore_scheduler(scheduler, state: dict) -> None:
    """Load the schedule position AND write its current lr into the optimizer (load_state_dict alone does not)."""
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def restore_training(engine, scheduler, tensors: dict, meta: dict) -> None:
    """Optimizer moments and step, schedule position and RNG from a checkpoint. Collective: every rank."""
    restore_optimizer(engine, tensors, meta)
    restore_scheduler(scheduler, meta["scheduler"])
    restore_rng(tensors, meta)


def restore_rng(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    random.setstate(_to_tuple(meta["rng_python"]))
    state = meta["rng_numpy"]
    np.random.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))


def _to_tuple(obj):
    return tuple(_to_tuple(x) for x in obj) if isinstance(obj, list) else obj
