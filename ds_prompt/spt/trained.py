"""A trained SPT bank folder read back as a model: the bank, its seen tasks' prompts and heads, and (when the
run trained it) the backbone's weights. Shared by `ds-prompt spt evaluate | inspect | export`."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ds_prompt.builders import load_model_for
from ds_prompt.data.tasks import get_task
from ds_prompt.errors import UserError
from ds_prompt.spt.bank import BankConfig, build_spt_model, load_bank, load_state

BACKBONE_FILE = "backbone.safetensors"  # the backbone's trained weights, when SPT trained them


def check_heads(head: str, unseen: list[str]) -> None:
    """UserError when unseen tasks would be scored by an untrained linear head."""
    if unseen and head == "linear":
        raise UserError(f"--head linear trains a classifier per task, so unseen tasks {', '.join(unseen)} would "
                        f"be scored by untrained weights: use --head auto (label words or similarity)")


def load_trained(bank: str, tasks: list[str] | None, model: str | None = None, dtype: str = "auto"):
    """(SPTModel, backbone, meta, task specs in task-id order, ids of `tasks`) rebuilt from a bank folder.

    The bank's seen tasks keep their ids (and prompts); tasks it was not trained on are unseen."""
    tensors, meta = load_bank(bank)
    backbone = load_model_for(model or meta["backbone"], meta.get("family"), dtype)
    backbone_file = Path(bank) / BACKBONE_FILE
    if backbone_file.is_file():
        _load_backbone_weights(backbone, backbone_file)
    seen = [get_task(n) for n in meta["tasks"]]
    wanted = tasks if tasks else (meta["heldout"] or meta["tasks"])
    specs = seen + [get_task(n) for n in wanted if get_task(n).name not in meta["tasks"]]
    spt = build_spt_model(backbone, BankConfig.from_json(meta), specs, meta["head"])
    check_heads(meta["head"], [t.name for t in specs[len(seen):]])
    load_state(spt.prompt, {k: v for k, v in tensors.items() if not k.startswith("head.")}, bank)
    head_params = dict(spt.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name.startswith("head."):
                head_params[name].copy_(value)
    names = [t.name for t in specs]
    return spt, backbone, meta, specs, [names.index(get_task(n).name) for n in wanted]


def _load_backbone_weights(backbone, path: Path) -> None:
    params = dict(backbone.model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            params[name].copy_(value.to(params[name].dtype))
