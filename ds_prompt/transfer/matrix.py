"""Zero-shot cross-task transfer: every prompt evaluated on every task, plus a random-prompt baseline row.

A prompt is scored on a target task with the TARGET task's verbalizer: label words for LM families, or, for
embedding-only encoders, a similarity head rebuilt from the target task's label descriptions (REFERENCE §1).
Writes matrix.csv (source,target,accuracy,f1,matthews,metric; "metric" is the target task's headline metric;
source "random" is the N(0, 0.02) baseline) and matrix.png (accuracy).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.artifacts import check_prompt_fits
from ds_prompt.builders import build_prompted, load_model_for
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path
from ds_prompt.models.family import Family
from ds_prompt.transfer.plots import transfer_heatmap
from ds_prompt.transfer.prompt_set import (
    PromptRef,
    as_list,
    common_backbone,
    head_kind,
    load_prompt_set,
    recorded_family,
)

MATRIX_COLUMNS = ("source", "target", "accuracy", "f1", "matthews", "metric")
RANDOM_SOURCE = "random"


def check_transferable(prompt: PromptRef, task_names: list[str]) -> None:
    """A prompt with a trained linear head scores only its own task."""
    others = [t for t in task_names if t != prompt.task]
    if head_kind(prompt.meta) == "linear" and others:
        raise UserError(f"prompt {prompt.path} has a linear head trained for {prompt.task}: it cannot score "
                        f"{others[0]}; train it with --head similarity or label_words to transfer it")


def scores_on_task(backbone, prompt: PromptRef, task, examples, max_length: int, batch_size: int = 64) -> dict:
    """{accuracy, f1, matthews, loss, n} of `prompt` on `examples` of `task`, with the target task's head (a
    linear head: its own)."""
    check_transferable(prompt, [task.name])
    built = build_prompted(backbone, task, prompt.tensor.shape[0], max_length, head_kind(prompt.meta),
                           prompt.tensor)
    params = dict(built.model.named_parameters())
    for name, value in prompt.extra.items():
        if name.startswith("head."):
            params[name].data.copy_(value)
    device = ds_setup.device()
    encoded = [built.encoder.encode(e) for e in examples]
    return evaluate(built.model.to(device), encoded, batch_size, backbone.tokenizer.pad_token_id,
                    backbone.family is Family.CAUSAL, device)


def random_prompt(like: PromptRef, seed: int = 0) -> PromptRef:
    """The baseline: N(0, 0.02) of `like`'s shape, scored with `like`'s head kind (auto for a linear head)."""
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.randn(*like.tensor.shape, generator=gen) * 0.02
    head = like.meta.get("head") if head_kind(like.meta) != "linear" else None
    return PromptRef(RANDOM_SOURCE, "random", tensor, {"head": head, "task": None}, {})


def transfer_matrix(prompts, tasks, data_dir: str | None = None, model: str | None = None,
                    limit: int | None = None, batch_size: int = 64, max_length: int | None = None,
                    random_baseline: bool = True, seed: int = 0, dtype: str = "auto") -> list[dict]:
    """Rows {source, target, accuracy, f1, matthews, metric} for every prompt (by name) x every task, then the
    random row."""
    refs = load_prompt_set(prompts)
    task_names = as_list(tasks) or list(dict.fromkeys(p.task for p in refs if p.task))
    if not task_names:
        raise UserError("--tasks is empty and the prompts record no task: pass --tasks T1,T2,...")
    ds_setup.init_distributed()
    backbone = load_model_for(common_backbone(refs, model), recorded_family(refs, model), dtype)
    for p in refs:
        check_prompt_fits(p.tensor, backbone.d_model, p.path)
        check_transferable(p, [get_task(t).name for t in task_names])
    sources = refs + ([random_prompt(refs[0], seed)] if random_baseline else [])
    rows = []
    for name in task_names:
        task = get_task(name)
        examples = load_examples(task, "eval", data_dir, limit=limit, seed=seed)
        for p in sources:
            length = max_length or p.meta.get("max_length") or refs[0].meta.get("max_length") or 128
            scores = scores_on_task(backbone, p, task, examples, length, batch_size)
            rows.append({"source": p.name, "target": task.name, "accuracy": scores["accuracy"],
                         "f1": scores["f1"], "matthews": scores["matthews"], "metric": task.metric})
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict], columns) -> Path:
    """Write `rows` (dicts) as CSV with `columns`, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | os.PathLike, columns) -> list[dict]:
    """Rows of a CSV that must have `columns` (UserError naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist: pass the matrix.csv written by `ds-prompt transfer matrix`")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"'{path}' lacks column(s) {', '.join(missing)} (has {reader.fieldnames}): pass a "
                            f"file with columns {','.join(columns)}")
        return list(reader)


def run_transfer_matrix(prompts, tasks, output_dir: str, **kwargs) -> list[dict]:
    """`transfer_matrix`, then (rank 0) output_dir/matrix.csv and the annotated heatmap output_dir/matrix.png."""
    rows = transfer_matrix(prompts, tasks, **kwargs)
    dist.on_rank0(write_csv, Path(output_dir) / "matrix.csv", rows, MATRIX_COLUMNS)
    dist.on_rank0(transfer_heatmap, rows, Path(output_dir) / "matrix.png")
    return rows
