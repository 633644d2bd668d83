"""Evaluating a saved prompt artifact (no DeepSpeed engine needed; multi-rank if launched so)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.artifacts import check_prompt_fits, load_prompt
from ds_prompt.builders import build_prompted, load_model_for
from ds_prompt.config import check_quantization
from ds_prompt.data.encoding import collate
from ds_prompt.data.loading import load_examples, read_input_file
from ds_prompt.data.tasks import get_task, use_task
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine.evaluate import evaluate
from ds_prompt.errors import UserError
from ds_prompt.io import ensure_writable_dir, write_json, write_jsonl
from ds_prompt.models.backbone import canonical_model
from ds_prompt.models.family import Family
from ds_prompt.models.heads import HEAD_KINDS

SUBSET_RULE = ("all examples of the split in file order; with a limit, the sorted indices "
               "random.Random(seed).sample(range(n), limit)")


def eval_subset(limit: int | None, seed: int) -> dict:
    """How an evaluation picks its examples (ds_prompt.data.loading._pick), recorded next to every accuracy."""
    return {"limit": limit, "seed": seed, "rule": SUBSET_RULE}


def _artifact(prompt_path: str, model: str | None):
    """(tensor, meta, extra) of a prompt artifact that names its backbone (or is given one)."""
    tensor, meta, extra = load_prompt(prompt_path)
    if not (model or meta.get("backbone")):
        raise UserError(f"prompt {prompt_path} records no backbone: pass --model")
    return tensor, meta, extra


def _artifact_backbone(prompt_path: str, tensor, meta: dict, model: str | None, family: str | None, dtype: str,
                       quantization: str | None):
    """The backbone `prompt_path` runs on (`model` overrides the recorded one), quantized as its run was when
    it is the recorded backbone and `quantization` is not given; the prompt must fit its width."""
    model_name = model or meta.get("backbone")
    if quantization is None:
        same = model is None or canonical_model(model) == canonical_model(meta.get("backbone"))
        quantization = meta.get("quantization") if same else None
    check_quantization(model_name, quantization)
    backbone = load_model_for(model_name, family or meta.get("family"), dtype, quantization)
    check_prompt_fits(tensor, backbone.d_model, prompt_path)
    return backbone


def _recorded_split(task, meta: dict, split: str, data_dir: str | None, limit: int | None, seed: int | None):
    """(examples, subset rule, data_dir) of `split`: `data_dir` defaults to the run's recorded one (when it still
    exists), `seed` to its training seed, so `--limit N` picks the subset training's --eval_limit N picked."""
    subset = eval_subset(limit, meta.get("seed", 0) if seed is None else seed)
    if data_dir is None and meta.get("data_dir") and os.path.isdir(meta["data_dir"]):
        data_dir = meta["data_dir"]  # the folder the prompt was trained from (prompt.json records it)
    return load_examples(task, split, data_dir, limit=limit, seed=subset["seed"]), subset, data_dir


def prompted_from_artifact(prompt_path: str, task_name: str | None = None, model: str | None = None,
                           family: str | None = None, dtype: str = "auto", max_length: int | None = None,
                           quantization: str | None = None):
    """(Prompted, meta) with the artifact's prompt (and linear head) loaded, for its task or `task_name`.
    `quantization` defaults to what the run used (prompt.json), when the backbone is the recorded one."""
    tensor, meta, extra = _artifact(prompt_path, model)
    if task_name is None and meta.get("task_spec"):
        task = use_task(meta["task_spec"])  # a custom task: rebuilt from the mapping prompt.json recorded
    else:
        task = get_task(task_name or meta.get("task") or "")
    backbone = _artifact_backbone(prompt_path, tensor, meta, model, family, dtype, quantization)
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
                    max_length: int | None = None, seed: int | None = None,
                    quantization: str | None = None) -> dict:
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
    built, meta = prompted_from_artifact(prompt, task, model, family, dtype, max_length, quantization)
    out = Path(output_dir) if output_dir else (Path(prompt) if Path(prompt).is_dir() else Path(prompt).parent)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file: pass a folder")
    dist.on_rank0(ensure_writable_dir, out)
    examples, subset, data_dir = _recorded_split(built.task, meta, split, data_dir, limit, seed)
    encoded = [built.encoder.encode(e) for e in examples]
    device = ds_setup.device()
    model_ = built.model.to(device)
    result = evaluate(model_, encoded, batch_size, built.backbone.tokenizer.pad_token_id,
                      built.backbone.family is Family.CAUSAL, device)
    result = {"task": built.task.name, "prompt": str(prompt), "model": model or meta.get("backbone"),
              "split": split, "data_dir": data_dir, "quantization": quantization or meta.get("quantization"),
              "eval_subset": subset, **result}
    dist.on_rank0(write_json, os.path.join(out, f"eval_{built.task.name}.json"), result)
    return result


def predict(prompt: str, output: str, task: str | None = None, split: str = "eval", input: str | None = None,
            data_dir: str | None = None, model: str | None = None, limit: int | None = None, batch_size: int = 64,
            dtype: str = "auto", quantization: str | None = None, seed: int | None = None) -> dict:
    """Predictions of a trained prompt, one JSON line per example in `output`: id, the texts, the gold label
    (null when unknown), the predicted label and every class's probability. Examples come from the task's
    `split` (with --limit: the seeded subset rule of evaluate) or from a user's `input` file (labels optional).
    Returns {n, labeled, accuracy (over labeled examples or None), output}."""

    if batch_size <= 0 or (limit is not None and limit <= 0):
        raise UserError("--batch_size and --limit must be positive integers")
    out = Path(output)
    if out.is_dir():
        raise UserError(f"--output {out} is a folder: pass a file path such as preds.jsonl")
    ds_setup.init_distributed()
    built, meta = prompted_from_artifact(prompt, task, model, None, dtype, None, quantization)
    if input is not None:
        examples, ids = read_input_file(built.task, input)
    else:
        examples = _recorded_split(built.task, meta, split, data_dir, limit, seed)[0]
        ids = list(range(len(examples)))
    encoded = [built.encoder.encode(e) for e in examples]
    device = ds_setup.device()
    net = built.model.to(device).eval()
    left = built.backbone.family is Family.CAUSAL
    pad = built.backbone.tokenizer.pad_token_id
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], pad, left).items()}
            logits = net(batch["input_ids"], batch["attention_mask"], batch["score_index"]).float()
            probabilities += torch.softmax(logits, -1).cpu().tolist()
    labels, fields = built.task.labels, built.task.text_fields
    rows, correct, labeled = [], 0, 0
    for i, (example, probs) in enumerate(zip(examples, probabilities)):
        best = max(range(len(probs)), key=probs.__getitem__)
        gold = labels[example.label] if example.label >= 0 else None
        labeled += gold is not None
        correct += gold is not None and example.label == best
        rows.append({"id": ids[i], **dict(zip(fields, example.texts)), "label": gold, "predicted": labels[best],
                     "probabilities": {label: round(p, 6) for label, p in zip(labels, probs)}})

    dist.on_rank0(write_jsonl, out, rows)
    return {"n": len(rows), "labeled": labeled, "accuracy": correct / labeled if labeled else None,
            "output": str(out), "task": built.task.name}


def generate_texts(prompt: str, texts: list[str], model: str | None = None, max_new_tokens: int = 32,
                   dtype: str = "auto", quantization: str | None = None) -> list[dict]:
    """Greedy generation from a causal or seq2seq backbone with the trained soft prompt prepended to each text's
    token embeddings (as in training: [prompt; text]); [{text, generated, token_ids}]."""

    if max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens {max_new_tokens} must be a positive integer")
    tensor, meta, _ = _artifact(prompt, model)
    backbone = _artifact_backbone(prompt, tensor, meta, model, None, dtype, quantization)
    if backbone.family not in (Family.CAUSAL, Family.SEQ2SEQ):
        raise UserError(f"generate needs a causal or seq2seq backbone; '{backbone.name}' is "
                        f"{backbone.family.value}")
    net, tok = backbone.model, backbone.tokenizer
    device = ds_setup.device()
    net.to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    results = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"].to(device)
            embeds = net.get_input_embeddings()(ids)
            embeds = torch.cat([tensor.to(device, embeds.dtype)[None], embeds], 1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
            out = net.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, pad_token_id=pad)
            new = out[0].tolist()
            if backbone.family is Family.SEQ2SEQ and new and new[0] == net.config.decoder_start_token_id:
                new = new[1:]
            results.append({"text": text, "generated": tok.decode(new, skip_special_tokens=True),
                            "token_ids": new})
    return results
