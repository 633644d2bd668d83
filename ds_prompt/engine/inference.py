"""Evaluating a saved prompt artifact (no DeepSpeed engine needed; multi-rank if launched so)."""
from __future__ import annotations

import os
from pathlib import Path


from ds_prompt import dist
from ds_prompt.artifacts import check_prompt_fits, load_prompt
from ds_prompt.builders import build_prompted, load_model_for
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.errors import UserError
from ds_prompt.io import ensure_writable_dir, write_json
from ds_prompt.models.family import Family
from ds_prompt.models.heads import HEAD_KINDS



SUBSET_RULE = ("all examples of the split in file order; with a limit, the sorted indices "
               "random.Random(seed).sample(range(n), limit)")


def eval_subset(limit: int | None, seed: int) -> dict:
    """How an evaluation picks its examples (ds_prompt.data.loading._pick), recorded next to every accuracy."""
    return {"limit": limit, "seed": seed, "rule": SUBSET_RULE}


def prompted_from_artifact(prompt_path: str, task_name: str | None = None, model: str | None = None,
                           family: str | None = None, dtype: str = "auto", max_length: int | None = None):
    """(Prompted, meta) with the artifact's prompt (and linear head) loaded, for its task or `task_name`."""
    tensor, meta, extra = load_prompt(prompt_path)
    model_name = model or meta.get("backbone")
    if not model_name:
        raise UserError(f"prompt {prompt_path} records no backbone: pass --model")
    task = get_task(task_name or meta.get("task") or "")
    backbone = load_model_for(model_name, family or meta.get("family"), dtype)
    check_prompt_fits(tensor, backbone.d_model, prompt_path)
    head = HEAD_KINDS.get(meta.get("head", ""), "auto")
    if head == "linear" and task_name and task_name != meta.get("task"):
        raise UserError(f"prompt {prompt_path} has a linear head trained for {meta.get('task')}: it cannot "
                        f"score task {task_name}")
    built = build_prompted(backbone, task, tensor.shape[0], max_length or meta.get("max_length", 128), head, tensor)
    for name, value in extra.items():
        if name.startswith("head."):
            dict(built.model.named_parameters())[name].data.copy_(value)
    return built, meta


def evaluate_prompt(prompt: str, task: str | None = None, data_dir: str | None = None, model: str | None = None,
                    split: str = "eval", limit: int | None = None, batch_size: int = 64,
                    output_dir: str | None = None, family: str | None = None, dtype: str = "auto",
                    max_length: int | None = None, seed: int | None = None) -> dict:
    """Accuracy of the artifact on `task`; writes eval_<task>.json into `output_dir` (default: its folder).

    With `limit`, the subset follows `eval_subset(limit, seed)`, the rule training uses for --eval_limit;
    `seed` defaults to the seed the prompt was trained with, so the same limit scores the same examples.
    `data_dir` defaults to the one recorded in prompt.json (when it still exists)."""
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UserError(f"--{name} {value!r} must be a positive integer")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"--seed {seed!r} must be an integer")
    ds_setup.init_distributed()
    built, meta = prompted_from_artifact(prompt, task, model, family, dtype, max_length)
    out = Path(output_dir) if output_dir else (Path(prompt) if Path(prompt).is_dir() else Path(prompt).parent)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file: pass a folder")
    dist.on_rank0(ensure_writable_dir, out)
    subset = eval_subset(limit, meta.get("seed", 0) if seed is None else seed)
    if data_dir is None and meta.get("data_dir") and os.path.isdir(meta["data_dir"]):
        data_dir = meta["data_dir"]  # the folder the prompt was trained from (prompt.json records it)
    examples = load_examples(built.task, split, data_dir, limit=limit, seed=subset["seed"])
    encoded = [built.encoder.encode(e) for e in examples]
    device = ds_setup.device()
    model_ = built.model.to(device)
    result = evaluate(model_, encoded, batch_size, built.backbone.tokenizer.pad_token_id,
                      built.backbone.family is Family.CAUSAL, device)
    result = {"task": built.task.name, "prompt": str(prompt), "model": model or meta.get("backbone"),
              "split": split, "data_dir": data_dir, "eval_subset": subset, **result}
    dist.on_rank0(write_json, os.path.join(out, f"eval_{built.task.name}.json"), result)
    return result
