"""SPT bank artifacts: bank.safetensors (the prompt module's tensors) + bank.json (BankConfig fields, backbone,
tasks, instructions, ...), written atomically and read back with every check a user file needs."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ds_prompt.errors import UserError, require
from ds_prompt.io import write_json, write_tensors

FORMAT = "ds_prompt.spt_bank/1"
BANK_FILE, BANK_META = "bank.safetensors", "bank.json"


def save_bank(output_dir, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write bank.safetensors + bank.json into `output_dir` (rank 0 only; call via dist.on_rank0)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tensors(out / BANK_FILE, tensors, metadata={"format": FORMAT})
    write_json(out / BANK_META, dict(meta, format=FORMAT))
    return out


def load_bank(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a bank folder (or its bank.safetensors). UserError when missing or corrupt."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    weights, meta_path = folder / BANK_FILE, folder / BANK_META
    require(weights.is_file() and meta_path.is_file(),
            f"'{path}' holds no {BANK_FILE} + {BANK_META}: pass the --output_dir of `ds-prompt spt train`")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"bank file '{weights}' is corrupt or not safetensors ({exc}): re-train it") from None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"'{meta_path}' is not valid JSON ({exc.msg}): re-train the bank") from None
    require(meta.get("format") == FORMAT, f"'{meta_path}' has format {meta.get('format')!r}, not {FORMAT}: "
                                          f"it is not an SPT bank")
    require(all(torch.isfinite(v).all() for v in tensors.values()),
            f"bank '{weights}' holds non-finite values: re-train it with a lower --lr")
    return tensors, meta
