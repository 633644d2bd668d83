"""Prompt artifacts: `prompt.safetensors` + `prompt.json`, and PEFT prompt-tuning adapters.

A prompt artifact folder holds:
- prompt.safetensors: "prompt" [prompt_length, d_model] fp32 (+ "head.*" tensors for a trained linear head)
- prompt.json: metadata (format, backbone, family, d_model, prompt_length, task, label words, init, steps,
  metrics, ...). Files are only ever read with safetensors/json: user files are never unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path, write_json, write_tensors

FORMAT = "ds_prompt.prompt/1"
PROMPT_FILE, META_FILE = "prompt.safetensors", "prompt.json"
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def save_prompt(output_dir: str | os.PathLike, prompt: torch.Tensor, meta: dict,
                extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the artifact folder atomically (both files appear together)."""
    out = Path(output_dir)
    meta = dict(meta, format=FORMAT, prompt_length=prompt.shape[0], d_model=prompt.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    write_tensors(out / PROMPT_FILE, {"prompt": prompt, **(extra_tensors or {})}, metadata={"format": FORMAT})
    write_json(out / META_FILE, meta)
    return out


def _safe_load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix in _PICKLE_SUFFIXES:
        raise UserError(f"'{path}' is a pickle file; ds_prompt never unpickles user files: convert it to "
                        f"safetensors (safetensors.torch.save_file) and pass that")
    if not path.is_file():
        raise UserError(f"prompt file '{path}' does not exist: pass a prompt folder or prompt.safetensors")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"prompt file '{path}' is corrupt or not safetensors ({exc}): re-export it") from None


def _resolve(path: str | os.PathLike) -> tuple[Path, str]:
    """(weights file, kind) where kind is 'ds_prompt' or 'peft'."""
    p = Path(path)
    if p.is_dir():
        if (p / PROMPT_FILE).exists():
            return p / PROMPT_FILE, "ds_prompt"
        if (p / PEFT_WEIGHTS).exists():
            return p / PEFT_WEIGHTS, "peft"
        raise UserError(f"'{p}' holds neither {PROMPT_FILE} nor a PEFT {PEFT_WEIGHTS}: pass a prompt artifact")
    return p, ("peft" if p.name == PEFT_WEIGHTS else "ds_prompt")


def load_prompt(path: str | os.PathLike) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    """(prompt [L, d] fp32, metadata, extra tensors) from a ds_prompt artifact or a PEFT adapter."""
    return _load(path, whole=True)


def _load(path, whole: bool):
    """`whole`: the artifact is used as a whole (scored, indexed, exported), so an adapter that lacks the
    linear head its prompt was trained with is refused; otherwise only the prompt tensor is wanted."""
    weights, kind = _resolve(path)
    tensors = _safe_load(weights)
    if kind == "peft":
        return _from_peft(weights, tensors, whole)
    if "prompt" not in tensors:
        raise UserError(f"'{weights}' has no 'prompt' tensor (keys: {', '.join(sorted(tensors)) or 'none'}): "
                        f"it is not a ds_prompt prompt")
    prompt = tensors.pop("prompt")
    check_prompt_tensor(prompt, str(weights))
    meta_path = weights.parent / META_FILE
    meta = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"'{meta_path}' is not valid JSON ({exc.msg}): re-export the prompt") from None
    _check_head_tensors(tensors, meta, prompt.shape[1], str(weights))
    return prompt.float(), meta, tensors


def check_prompt_tensor(prompt: torch.Tensor, where: str) -> None:
    """UserError naming what is wrong with a stored prompt: rank, rows, dtype or non-finite values."""
    if prompt.ndim != 2:
        raise UserError(f"'{where}' prompt has shape {tuple(prompt.shape)}: a prompt is [prompt_length, d_model]")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise UserError(f"'{where}' prompt has shape {tuple(prompt.shape)}: it holds no vectors; re-train it")
    if not prompt.is_floating_point():
        raise UserError(f"'{where}' prompt has dtype {str(prompt.dtype).removeprefix('torch.')}: prompts are "
                        f"floating-point embeddings; re-export it")
    bad = int((~torch.isfinite(prompt)).sum())
    if bad:
        raise UserError(f"'{where}' prompt has {bad} non-finite values (NaN/inf): re-train it, e.g. with a lower --lr")


def _check_head_tensors(tensors: dict, meta: dict, d_model: int, where: str) -> None:
    """A linear-head artifact carries exactly head.linear.weight [classes, d] and head.linear.bias [classes];
    any other artifact carries no extra tensor."""
    linear = meta.get("head") == "LinearHead"
    names = sorted(tensors)
    if not linear:
        if names:
            raise UserError(f"'{where}' holds unexpected tensor(s) {', '.join(names)} beside 'prompt' (its head is "
                            f"{meta.get('head', 'not recorded')}): re-export the prompt")
        return
    if names != ["head.linear.bias", "head.linear.weight"]:
        raise UserError(f"'{where}' has a linear head but tensors {', '.join(names) or 'none'} beside 'prompt': "
                        f"expected head.linear.weight and head.linear.bias; re-export the prompt")
    weight, bias = tensors["head.linear.weight"], tensors["head.linear.bias"]
    classes = len(meta.get("labels") or []) or weight.shape[0]
    if weight.shape != (classes, d_model) or bias.shape != (classes,):
        raise UserError(f"'{where}' linear head has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
                        f"expected ({classes}, {d_model}) and ({classes},): re-export the prompt")


def load_prompt_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Only the prompt [L, d] (e.g. for `--init file:`): also from an adapter whose linear head did not travel."""
    return _load(path, whole=False)[0]


def check_prompt_fits(prompt: torch.Tensor, d_model: int, source: str) -> None:
    if prompt.shape[1] != d_model:
        raise UserError(f"prompt {source} has d={prompt.shape[1]} but the model expects {d_model}: map it "
                        f"with `ds-prompt transfer projector apply` or use a prompt trained on this model")


# ---- PEFT interop -------------------------------------------------------------------------------------------
# what an exported adapter carries in its safetensors metadata and load_prompt reads back
_PEFT_FACTS = ("backbone", "backbone_path", "backbone_source", "quantization", "task", "task_spec", "labels",
               "label_words", "template", "family", "head", "max_length", "seed", "data_dir")
_LINEAR_HEADS = ("LinearHead", "linear")  # prompt.json records the class; an SPT bank the --head spelling
_PEFT_TASK_TYPE = {"mlm": "FEATURE_EXTRACTION", "encoder": "FEATURE_EXTRACTION", "causal": "CAUSAL_LM",
                   "seq2seq": "SEQ_2_SEQ_LM"}


def export_peft(prompt: torch.Tensor, meta: dict, output_dir: str | os.PathLike, model_config=None) -> Path:
    """Write a PEFT PromptTuning adapter (adapter_config.json + adapter_model.safetensors).

    PEFT stores "prompt_embeddings" [num_virtual_tokens * num_transformer_submodules, d]; seq2seq models
    get the prompt for the encoder only, so one submodule. `base_model_name_or_path` is the real folder or hub
    id the prompt was trained on (prompt.json's backbone_path; an alias such as `minilm` otherwise), so
    `AutoPeftModel*.from_pretrained(adapter)` finds it; the task, label words, labels and template go into
    the safetensors metadata ("ds_prompt" key, JSON), and `load_prompt(adapter)` reads them back, so the adapter
    evaluates like the prompt it came from. A linear-head prompt is refused: the adapter cannot hold the head.
    """
    if meta.get("head") in _LINEAR_HEADS:
        raise UserError("this prompt was trained with a linear head (--head linear), which a PEFT prompt-tuning "
                        "adapter cannot hold: use the prompt folder itself, or train with --head label_words to "
                        "export")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": _PEFT_TASK_TYPE.get(meta.get("family", "encoder"), "FEATURE_EXTRACTION"),
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": meta.get("backbone_path") or meta.get("backbone"),
        "inference_mode": True,
        "revision": None,
        "tokenizer_name_or_path": None,
        "prompt_tuning_init_text": None,
        "tokenizer_kwargs": None,
        "modules_to_save": None,
    }
    if model_config is not None:
        config["num_attention_heads"] = getattr(model_config, "num_attention_heads", None)
        config["num_layers"] = (getattr(model_config, "num_hidden_layers", None)
                                or getattr(model_config, "num_layers", None))
    task_facts = {k: meta[k] for k in _PEFT_FACTS if meta.get(k) is not None}
    with atomic_path(out / PEFT_WEIGHTS) as tmp:
        save_file({"prompt_embeddings": prompt.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={"format": "pt", "ds_prompt": json.dumps(task_facts)})
    write_json(out / PEFT_CONFIG, config)
    return out


def _from_peft(weights: Path, tensors: dict[str, torch.Tensor], whole: bool = True):
    config_path = weights.parent / PEFT_CONFIG
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config and config.get("peft_type") != "PROMPT_TUNING":
        raise UserError(f"'{weights.parent}' is a PEFT {config.get('peft_type')} adapter, not PROMPT_TUNING: "
                        f"only prompt-tuning adapters can initialize a prompt")
    if "prompt_embeddings" not in tensors:
        raise UserError(f"'{weights}' has no 'prompt_embeddings' tensor: not a PEFT prompt-tuning adapter")
    raw = tensors["prompt_embeddings"]
    check_prompt_tensor(raw, str(weights))
    emb = raw.float()
    n = config.get("num_virtual_tokens", emb.shape[0])
    submodules = config.get("num_transformer_submodules") or 1
    if not isinstance(n, int) or n < 1 or emb.shape[0] != n * submodules:
        raise UserError(f"'{weights.parent}' adapter_config.json says num_virtual_tokens {n!r} x "
                        f"{submodules} submodule(s) but prompt_embeddings has {emb.shape[0]} rows: fix the config")
    if config.get("token_dim", emb.shape[1]) != emb.shape[1]:
        raise UserError(f"'{weights.parent}' adapter_config.json says token_dim {config['token_dim']} but "
                        f"prompt_embeddings has d={emb.shape[1]}: fix the config")
    base = config.get("base_model_name_or_path")
    facts = _peft_facts(weights)
    if whole and facts.get("head") in _LINEAR_HEADS:  # written by exports from before the refusal
        raise UserError(f"'{weights.parent}' holds a prompt trained with a linear head, which a PEFT adapter "
                        f"cannot carry: use the ds_prompt prompt folder it was exported from (the adapter still "
                        f"serves as --init file:)")
    if base and base != facts.get("backbone_path", facts.get("backbone")):
        # adapter_config.json was re-pointed (another machine, another copy): the base it names wins, and the
        # recorded backbone identity no longer describes it
        facts = {k: v for k, v in facts.items() if k not in ("backbone", "backbone_source", "quantization")}
    meta = {**facts, "backbone": facts.get("backbone") or base, "source": "peft"}
    if base:
        meta["backbone_path"] = base
    return emb[:n], meta, {}


def _peft_facts(weights: Path) -> dict:
    """The ds_prompt facts `export_peft` put into the adapter's safetensors metadata ({} for an adapter PEFT
    itself wrote): backbone, task, labels, label words, template, family, ..."""
    with safe_open(str(weights), "pt") as f:
        raw = (f.metadata() or {}).get("ds_prompt")
    if not raw:
        return {}
    try:
        facts = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"'{weights}' carries a ds_prompt metadata entry that is not valid JSON ({exc.msg}): "
                        f"re-export the adapter") from None
    if not isinstance(facts, dict):
        raise UserError(f"'{weights}' ds_prompt metadata is {type(facts).__name__}, not an object: re-export it")
    return {k: facts[k] for k in _PEFT_FACTS if k in facts}
