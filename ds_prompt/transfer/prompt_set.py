"""Sets of prompt artifacts: a comma list of artifact paths, or one folder (an artifact itself, or holding
artifact sub-folders). Each prompt gets a short `name`: the task it was trained on, or its folder name when two
prompts share a task (names label the rows/columns of matrices and indicator tables)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ds_prompt.artifacts import PROMPT_FILE, load_prompt
from ds_prompt.errors import UserError
from ds_prompt.models.backbone import canonical_model
from ds_prompt.models.heads import HEAD_KINDS


@dataclass
class PromptRef:
    """A loaded prompt artifact: `tensor` [L, d] fp32, its prompt.json `meta`, extra tensors (linear head)."""
    name: str
    path: str
    tensor: torch.Tensor
    meta: dict
    extra: dict

    @property
    def backbone(self) -> str | None:
        return self.meta.get("backbone")

    @property
    def task(self) -> str | None:
        return self.meta.get("task")


def as_list(value) -> list[str]:
    """A flag given as 'a,b', ('a', 'b') (fire parses bare comma lists to tuples) or a single value."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _is_artifact(path: Path) -> bool:
    return path.is_file() or (path / PROMPT_FILE).is_file() or (path / "adapter_model.safetensors").is_file()


def prompt_paths(spec) -> list[str]:
    """Artifact paths from a comma list, or from one folder (an artifact, or holding artifact sub-folders)."""
    items = as_list(spec)
    if not items:
        raise UserError("--prompts is empty: pass a folder of prompt artifacts or P1,P2,...")
    if len(items) == 1 and Path(items[0]).is_dir() and not _is_artifact(Path(items[0])):
        children = sorted(str(p) for p in Path(items[0]).iterdir() if p.is_dir() and _is_artifact(p))
        if not children:
            raise UserError(f"--prompts folder '{items[0]}' holds no prompt artifacts (sub-folders with "
                            f"{PROMPT_FILE}): pass P1,P2,... or a folder of trained runs")
        return children
    return items


def load_prompt_set(spec) -> list[PromptRef]:
    """Every prompt of `spec` (see `prompt_paths`), named by task, or by folder where tasks repeat."""
    loaded = [(path, *load_prompt(path)) for path in prompt_paths(spec)]
    tasks = [meta.get("task") for _, _, meta, _ in loaded]
    refs = []
    for path, tensor, meta, extra in loaded:
        task = meta.get("task")
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        name = task if task and tasks.count(task) == 1 else folder.name
        refs.append(PromptRef(name, str(path), tensor, meta, extra))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise UserError(f"prompts share names {sorted({n for n in names if names.count(n) > 1})}: put each "
                        f"prompt in a folder of its own name")
    return refs


def common_backbone(prompts: list[PromptRef], model: str | None = None) -> str:
    """The one backbone all `prompts` were trained on, or `model` when given."""
    if model:
        return model
    names = sorted({canonical_model(p.backbone) for p in prompts if p.backbone})
    if len(names) != 1:
        found = ", ".join(names) or "none recorded"
        raise UserError(f"prompts come from backbones ({found}): pass --model M, after mapping foreign prompts "
                        f"with `ds-prompt transfer projector apply`")
    return names[0]


def recorded_family(prompts: list[PromptRef], model: str | None = None) -> str | None:
    """The family recorded with the prompts (None: auto-detect, also whenever --model overrides the backbone)."""
    return None if model else prompts[0].meta.get("family")


def head_kind(meta: dict) -> str:
    """The head kind (label_words, similarity, linear; else auto) recorded in a prompt's metadata."""
    return HEAD_KINDS.get(meta.get("head", ""), "auto")


# ---- the library ---------------------------------------------------------------------------------------------
