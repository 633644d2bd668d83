"""DeepSpeed plumbing: process group, config resolution, engine construction, optimizer and schedule."""
from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import os
import socket
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.config import CHOICES, LoopArgs
from ds_prompt.engine.run_folder import claim
from ds_prompt.errors import UserError
from ds_prompt.io import ensure_writable_dir
from ds_prompt.models.backbone import resolve_dtype

# The repository's ds_configs/ folder, installed as the package data of ds_prompt.ds_configs.
CONFIG_DIR = Path(str(importlib.resources.files("ds_prompt.ds_configs")))
_BUILTIN_ZERO0 = {"zero_optimization": {"stage": 0}, "steps_per_print": 10**9, "zero_allow_untested_optimizer": True,
                  "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join the process group the launcher set up (deepspeed / torchrun / slurm), or make a 1-rank one."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    import deepspeed
    from deepspeed.utils import logger as ds_logger
    ds_logger.setLevel(logging.WARNING)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_ds_config(name_or_path: str | None) -> dict:
    """A DeepSpeed config dict from a JSON path or a ds_configs/ name (zero0, zero2, zero3, zero3_offload).

    There is one config per ZeRO setup: precision (bf16/fp16) and offload pin_memory are "auto" and filled
    from the run's --dtype and device by `fill_ds_config`. The former per-device names (`zero3_cpu`, ...)
    still work: they name the same config."""
    if name_or_path is None:
        name_or_path = "zero0"
        if not (CONFIG_DIR / "zero0.json").exists():
            return json.loads(json.dumps(_BUILTIN_ZERO0))
    path = Path(name_or_path)
    if not path.is_file():
        stem = name_or_path.removesuffix(".json")
        path = CONFIG_DIR / f"{stem}.json"
        if not path.is_file() and stem.endswith("_cpu"):
            path = CONFIG_DIR / f"{stem.removesuffix('_cpu')}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []
        raise UserError(f"--deepspeed '{name_or_path}' is neither a file nor a config in ds_configs/ "
                        f"({', '.join(names) or 'none found'}): pass a JSON path")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"DeepSpeed config '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise UserError(f"DeepSpeed config '{path}' must be a JSON object, not a {type(config).__name__}")
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config.get("zero_optimization", {}),
                                                                             dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"DeepSpeed config '{path}': zero_optimization.stage {stage!r} must be 0, 1, 2 or 3")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UserError(f"DeepSpeed config '{path}' has an '{section}' block; ds_prompt builds these from "
                            f"--optimizer/--lr/--scheduler: remove the block")
    return config


def start_run(out: str, seed: int) -> str:
    """Every rank: join the process group, have rank 0 create `out` (UserError if unwritable) before anyone
    goes on, and seed torch. Returns `out`."""
    init_distributed()
    dist.on_rank0(ensure_writable_dir, out)
    dist.barrier()
    torch.manual_seed(seed)
    return out


def claim_output_dir(out: str, recipe: str, identity: dict, max_steps: int, resume: bool, overwrite: bool):
    """Every rank: rank 0 claims `out` for this run (`engine.run_folder.claim`: lock, identity, resume rules)
    and every rank raises the same UserError if it cannot. Returns rank 0's RunFolder (None elsewhere)."""
    folder, error, failure = None, None, None
    if dist.is_rank0():
        try:
            folder = claim(out, recipe, identity, max_steps, resume, overwrite)
        except BaseException as exc:  # every failure reaches the other ranks, or they would wait here forever
            error, failure = (str(exc) if isinstance(exc, UserError) else
                              f"rank 0 could not claim --output_dir {out} ({type(exc).__name__})"), exc
    error = dist.broadcast_object(error)
    if failure is not None:
        raise failure
    if error is not None:
        raise UserError(error)
    return folder


def run_in_claimed_folder(out: str, recipe: str, identity: dict, max_steps: int, resume: bool, overwrite: bool,
                          body):
    """`body()` with `out` claimed for this run (see `claim_output_dir`); the claim is released afterwards,
    and a folder the claim created is removed again if `body` fails before the run's first checkpoint."""
    folder = claim_output_dir(out, recipe, identity, max_steps, resume, overwrite)
    try:
        result = body()
    except BaseException:
        if folder is not None:
            folder.release(failed=True)
        raise
    if folder is not None:
        folder.release()
    return result


def ds_config_for(deepspeed: str | None, loop: LoopArgs, grad_clip: float, dtype: str | None) -> dict:
    """The DeepSpeed config `deepspeed` (--deepspeed) names, filled from the loop group's batch and accumulation,
    --grad_clip and --dtype at this world size."""
    return fill_ds_config(load_ds_config(deepspeed), loop.batch_size, loop.grad_accum, grad_clip, dist.world_size(),
                          dtype)


def fill_ds_config(config: dict, batch_size: int, grad_accum: int, grad_clip: float, world: int,
                   dtype: str | None = None) -> dict:
    """Set the batch/accumulation/clipping entries from the run flags, and precision from `dtype` (--dtype;
    None = auto: bf16 on CUDA, fp32 on CPU): the flags are the single source. A config that sets them
    explicitly must agree."""
    if batch_size % (world * grad_accum):
        raise UserError(f"--batch_size {batch_size} is not divisible by world_size ({world}) x --grad_accum "
                        f"({grad_accum}): pick a multiple of {world * grad_accum}")
    config = dict(config)
    wanted = dict(train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                  train_micro_batch_size_per_gpu=batch_size // (world * grad_accum))
    flags = {"train_batch_size": "--batch_size", "gradient_accumulation_steps": "--grad_accum",
             "train_micro_batch_size_per_gpu": "--batch_size / (world size x --grad_accum)"}
    for key, value in wanted.items():
        if config.get(key, "auto") not in ("auto", value):
            raise UserError(f"the DeepSpeed config sets {key} {config[key]} but {flags[key]} gives {value}: set it "
                            f"to \"auto\" (ds_prompt fills it from the flags) or change the flag")
    config.update(wanted, gradient_clipping=grad_clip)
    precision = resolve_dtype(dtype)
    for key, wanted_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        block = dict(config.get(key) or {})
        want = precision == wanted_dtype
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = want
        elif bool(block["enabled"]) != want:
            raise UserError(f"the DeepSpeed config sets {key}.enabled {block['enabled']} but --dtype "
                            f"{dtype or 'auto'} computes in {str(precision).replace('torch.', '')}: set it to "
                            f"\"auto\" (ds_prompt fills it from --dtype) or change --dtype")
        config[key] = block
    if config["bf16"]["enabled"] and not torch.cuda.is_available():
        raise UserError("bf16 is ~150x slower than fp32 on this CPU: use --dtype fp32 (the CPU default)")
    zero = dict(config.get("zero_optimization") or {})
    for key in ("offload_param", "offload_optimizer"):
        if isinstance(zero.get(key), dict) and zero[key].get("pin_memory") == "auto":
            zero[key] = dict(zero[key], pin_memory=torch.cuda.is_available())
    if zero:
        config["zero_optimization"] = zero
    return config


@contextlib.contextmanager
def sharded_loading(ds_config: dict):
    """Under ZeRO-3, make `from_pretrained` build the model inside deepspeed.zero.Init, so each rank only
    ever holds its shard of the frozen weights (a 70B model never materializes whole on one rank)."""
    if zero_stage(ds_config) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    keep_alive = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference
    try:
        yield
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
        unset_hf_deepspeed_config()
        del keep_alive


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise UserError(f"unknown --optimizer '{name}': use adamw or adafactor")


def build_scheduler(name: str, optimizer, warmup_steps: int, max_steps: int):
    """`transformers.get_scheduler(name, ...)` over `max_steps` with `warmup_steps` of linear warmup from 0
    (transformers' convention); `constant` with warmup is transformers' `constant_with_warmup`."""
    from transformers import get_scheduler

    if name not in CHOICES["scheduler"]:
        raise UserError(f"unknown --scheduler '{name}': use one of {', '.join(CHOICES['scheduler'])}")
    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps)


def initialize_engine(model, ds_config: dict, optimizer, scheduler):
    import deepspeed
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False)
    return engine, optimizer, scheduler
