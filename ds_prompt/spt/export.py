"""Exporting a trained SPT bank: per task, the retrieved-and-combined prompt as a plain prompt artifact (usable by
`ds-prompt evaluate/predict/generate/train --init file:`) or a PEFT PromptTuning adapter.

For task t and its discrete prompt k, the SPT prompt is [t's task prompt (if any); the memory retrieved by k's
query]; with `--query_source instruction` it depends on (t, k) only, so it is one fixed tensor per task and
exports exactly: `ds-prompt evaluate` of the export scores what `ds-prompt spt evaluate` scores for prompt k
(tested), unless the bank was trained with --instruction_in_input (then the discrete prompt was also part of
the model input, which a plain prompt does not reproduce; prompt.json says so). A bank trained with --head linear
exports each task's head beside its prompt (prompt.json records each head's class), and cannot go to PEFT.
Banks whose query reads the input (instruction+input) retrieve per example and cannot be exported this way. The
bank itself (bank.safetensors + bank.json: memory, keys, task prompts and the retrieval config) is the export of
the whole SPT run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.artifacts import export_peft, save_prompt
from ds_prompt.engine import setup as ds_setup
from ds_prompt.errors import UserError
from ds_prompt.models.family import Family
from ds_prompt.models.heads import LinearHead
from ds_prompt.spt.bank import QuerySource, load_bank
from ds_prompt.spt.mixture import TaskSuite
from ds_prompt.spt.trained import load_trained

FORMATS = ("prompt", "peft")


def export_bank(bank: str, tasks: list[str] | None, output_dir: str, format: str = "prompt", instruction: int = 0,
                model: str | None = None, dtype: str = "auto") -> list[dict]:
    """Write <output_dir>/<task>/ for each task (default: the bank's seen and held-out tasks); rows
    {task, path, prompt_length, instruction}."""
    if format not in FORMATS:
        raise UserError(f"unknown --format '{format}': use prompt (a ds_prompt artifact) or peft")
    ds_setup.init_distributed()
    _, saved = load_bank(bank)
    wanted = tasks or (saved["tasks"] + saved["heldout"])
    spt, backbone, meta, specs, ids = load_trained(bank, wanted, model, dtype)
    cfg = spt.prompt.cfg
    if cfg.query_source is not QuerySource.INSTRUCTION:
        raise UserError(f"bank {bank} retrieves per example (--query_source {cfg.query_source.value}): only banks "
                        f"trained with --query_source instruction have one prompt per task to export")
    if format == "peft" and meta["head"] == "linear":
        raise UserError(f"bank {bank} was trained with --head linear: a PEFT prompt-tuning adapter cannot hold the "
                        f"per-task heads; use --format prompt (it writes each task's head beside its prompt)")
    if meta.get("instruction_in_input"):
        dist.on_rank0(print, f"ds-prompt: note: bank {bank} was trained with --instruction_in_input (each task's "
                      f"discrete prompt was also in the model input); a plain prompt does not put it there, so "
                      f"`ds-prompt evaluate` of this export can score below `ds-prompt spt evaluate`",
                      file=sys.stderr)
    suite = TaskSuite.build(specs, backbone.tokenizer, backbone.family, meta["max_length"], cfg.prompt_length,
                            [[] for _ in specs], [[] for _ in specs], backbone.family is Family.CAUSAL)
    rows = []
    spt.eval()
    for t in ids:
        task = suite.tasks[t]
        if not 0 <= instruction < len(task.instruction_ids):
            raise UserError(f"--instruction {instruction}: task {task.spec.name} has {len(task.instruction_ids)} "
                            f"discrete prompts (0..{len(task.instruction_ids) - 1})")
        ids_k = torch.tensor([task.instruction_ids[instruction]])
        with torch.no_grad():
            prompt = spt.prompt(1, torch.float32, task_ids=torch.tensor([t]), instruction_ids=ids_k,
                                instruction_mask=torch.ones_like(ids_k),
                                query_input_ids=torch.zeros(1, 1, dtype=torch.long),
                                query_input_mask=torch.zeros(1, 1, dtype=torch.long))[0]
        task_head = spt.head.heads[t]  # recorded as its class, as prompt tuning records it; a linear one travels
        head_tensors = ({f"head.{k}": v.detach().float().cpu() for k, v in task_head.state_dict().items()}
                        if isinstance(task_head, LinearHead) else {})
        record = {**backbone.record(), "family": meta.get("family", backbone.family.value),
                  "task": task.spec.name, "labels": list(task.spec.labels),
                  "label_words": [list(w) for w in task.spec.label_words], "template": task.spec.template,
                  "head": type(task_head).__name__, "max_length": meta["max_length"], "seed": meta.get("seed", 0),
                  "prompt_length": int(prompt.shape[0]),
                  "spt_source": {"bank": str(bank), "instruction": instruction,
                                 "instruction_text": task.spec.instructions[instruction],
                                 "seen": t < cfg.num_tasks,
                                 "instruction_in_input": bool(meta.get("instruction_in_input", False))}}
        path = Path(output_dir) / task.spec.name
        if format == "peft":
            dist.on_rank0(export_peft, prompt, record, path, backbone.model.config)
        else:
            dist.on_rank0(save_prompt, path, prompt, record, head_tensors)
        rows.append({"task": task.spec.name, "path": str(path), "prompt_length": int(prompt.shape[0]),
                     "instruction": instruction})
    return rows
