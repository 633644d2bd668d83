"""Cross-model prompt projector (REFERENCE §1): map a source model's prompt to a target model.

    P_s [L_s, d_s] -> flatten -> Linear(L_s*d_s, hidden) -> LeakyReLU (or Tanh) -> Linear(hidden, L_t*d_t)
                   -> reshape [L_t, d_t] -> LayerNorm(d_t)

Trained with the TARGET task's loss through the frozen TARGET model (not by regressing onto target prompts):
the projector output replaces the soft prompt (`ProjectedPrompt`) inside `ProjectorObjective`; the training
recipe is recipes.projector. Saved as projector.safetensors + projector.json; `apply_projector` writes an
ordinary prompt artifact for the target model that `evaluate` and `train --init file:` accept.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ds_prompt.artifacts import load_prompt, save_prompt
from ds_prompt.builders import pooled_text_embeddings
from ds_prompt.data.tasks import get_task
from ds_prompt.errors import UserError
from ds_prompt.io import write_json, write_tensors
from ds_prompt.models.heads import LabelWordHead, head_transform
from ds_prompt.models.prompted import PromptedModel, build_head

FORMAT = "ds_prompt.projector/1"
WEIGHTS_FILE, CONFIG_FILE = "projector.safetensors", "projector.json"
ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}
HEAD_CLASSES = {"label_words": "LabelWordHead", "similarity": "SimilarityHead"}


@dataclass
class ProjectorConfig:
    """Shapes and provenance of a projector; `target_length` 0 means the source length."""
    source_length: int
    source_dim: int
    target_dim: int
    target_length: int = 0
    hidden: int = 768
    activation: str = "leaky_relu"
    source_model: str | None = None
    target_model: str | None = None
    target_family: str | None = None
    target_record: dict | None = None  # the target backbone as prompt.json records it (Backbone.record)
    target_head: str = "label_words"
    tasks: list = field(default_factory=list)
    max_length: int = 128

    def __post_init__(self):
        self.target_length = self.target_length or self.source_length
        if self.activation not in ACTIVATIONS:
            raise UserError(f"--activation '{self.activation}' is unknown: use {' or '.join(ACTIVATIONS)}")


class PromptProjector(nn.Module):
    """[L_s, d_s] (or [B, L_s, d_s]) source prompt -> [L_t, d_t] (or [B, L_t, d_t]) target prompt, fp32."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        c = config
        self.net = nn.Sequential(nn.Linear(c.source_length * c.source_dim, c.hidden), ACTIVATIONS[c.activation](),
                                 nn.Linear(c.hidden, c.target_length * c.target_dim))
        self.norm = nn.LayerNorm(c.target_dim)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        c = self.config
        if tuple(prompt.shape[-2:]) != (c.source_length, c.source_dim):
            raise UserError(f"prompt has shape {tuple(prompt.shape[-2:])} but the projector maps "
                            f"[{c.source_length}, {c.source_dim}] prompts of {c.source_model}: use a prompt of "
                            f"that model and length, or train a projector for this one")
        lead = prompt.shape[:-2]
        out = self.net(prompt.reshape(*lead, -1).to(self.norm.weight.dtype))
        return self.norm(out.reshape(*lead, c.target_length, c.target_dim))

    def save_pretrained(self, output_dir: str | os.PathLike, extra: dict | None = None) -> Path:
        """projector.safetensors + projector.json (config + `extra`)."""
        return save_projector(output_dir, self.config, self.state_dict(), extra)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> tuple["PromptProjector", dict]:
        """(projector, its projector.json) from a folder written by `save_pretrained`."""
        folder = Path(path)
        if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
            raise UserError(f"'{folder}' holds no {WEIGHTS_FILE} + {CONFIG_FILE}: pass the --output_dir of "
                            f"`ds-prompt transfer projector train`")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        names = {f.name for f in dataclasses.fields(ProjectorConfig)}
        projector = cls(ProjectorConfig(**{k: v for k, v in meta.items() if k in names}))
        projector.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return projector.eval(), meta


def save_projector(output_dir: str | os.PathLike, config: ProjectorConfig, state: dict[str, torch.Tensor],
                   extra: dict | None = None) -> Path:
    """Write a projector's weights `state` (PromptProjector.state_dict names) and its config + `extra`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tensors(out / WEIGHTS_FILE, state, metadata={"format": FORMAT})
    write_json(out / CONFIG_FILE, {"format": FORMAT, **dataclasses.asdict(config), **(extra or {})})
    return out


class ProjectedPrompt(nn.Module):
    """A prompt module (PromptedModel calls it as prompt(batch_size, dtype, **prompt_inputs)) whose prompt is
    projector(source prompt `source`): [batch, L_t, d_t]. Source prompts [n, L_s, d_s] are a frozen buffer."""

    def __init__(self, projector: PromptProjector, sources: torch.Tensor):
        super().__init__()
        self.projector = projector
        self.register_buffer("sources", sources.float().clone())

    def forward(self, batch_size: int, dtype: torch.dtype, source: int = 0) -> torch.Tensor:
        return self.projector(self.sources[source]).to(dtype).unsqueeze(0).expand(batch_size, -1, -1)


class ProjectorObjective(nn.Module):
    """Frozen target model + projected prompt + one head per (source, task) pair.

    forward(input_ids, attention_mask, score_index, source=k) -> [B, classes_k] logits of pair k. Only the
    projector has trainable parameters.
    """

    def __init__(self, backbone, projector: PromptProjector, sources: torch.Tensor, tasks, head: str):
        super().__init__()
        if head == "linear":
            raise UserError("--head linear adds new weights per task; the projector is trained through the "
                            "frozen target model: use --head label_words or similarity")
        encode = pooled_text_embeddings(backbone)
        self.heads = nn.ModuleList(build_head(head, backbone.model, backbone.tokenizer, backbone.family, t, encode)
                                   for t in tasks)
        self.prompted = PromptedModel(backbone.model, backbone.family, ProjectedPrompt(projector, sources),
                                      nn.Identity())
        label_words = isinstance(self.heads[0], LabelWordHead)
        self.transform = head_transform(backbone.model, backbone.family) if label_words else None

    @property
    def projector(self) -> PromptProjector:
        return self.prompted.prompt.projector

    def forward(self, input_ids, attention_mask, score_index, source: int | torch.Tensor = 0) -> torch.Tensor:
        source = int(source)  # the shared loop hands batch entries over as tensors
        h = self.prompted(input_ids, attention_mask, score_index, source=source)
        if self.transform is not None:
            h = self.transform(h)
        return self.heads[source](h)


# ---- applying a projector ------------------------------------------------------------------------------------
def apply_projector(projector: str, prompt: str, output_dir: str, task: str | None = None) -> Path:
    """Map the artifact `prompt` to the projector's target model; write a prompt artifact to `output_dir`."""
    model, info = PromptProjector.from_pretrained(projector)
    tensor, meta, _ = load_prompt(prompt)
    with torch.no_grad():
        mapped = model(tensor)
    task_name = task or meta.get("task") or (info.get("tasks") or [None])[0]
    spec = get_task(task_name) if task_name else None
    record = info.get("target_record") or {"backbone": info["target_model"]}  # projectors before 2026-12-03
    target = {**record, "family": info["target_family"], "task": task_name,
              "head": HEAD_CLASSES[info.get("target_head", "label_words")], "max_length": info.get("max_length"),
              "init": f"projector:{projector}", "projected_from": str(prompt),
              "source_backbone": meta.get("backbone"), "steps": 0}
    if spec is not None:
        target.update(label_words=[list(w) for w in spec.label_words], labels=list(spec.labels))
    return save_prompt(output_dir, mapped, target)
