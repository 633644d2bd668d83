"""Shared test fixtures: a minimal task and a builder for prompted tiny models."""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from ds_prompt.data.encoding import TemplateEncoder, collate
from ds_prompt.models.backbone import load_backbone
from ds_prompt.models.family import Family
from ds_prompt.models.heads import mean_pool
from ds_prompt.models.prompted import PromptedModel, build_head, new_soft_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

PAIR_TASK = SimpleNamespace(
    name="pairtask", text_fields=("text_a", "text_b"), labels=("yes", "no", "maybe"),
    label_words=(("yes",), ("no", "never"), ("maybe",)), num_labels=3,
    label_descriptions=("They agree.", "They contradict.", "Unrelated."),
    template="{text_a} ? {mask} , {text_b}")

SENTENCES = [("the movie was a total delight from start to end", "i loved it"),
             ("bad", "awful and boring, a waste of time"),
             ("a fine hotel near the station with kind staff and clean rooms", "would stay again"),
             ("meh", "ok")]


def subprocess_env(**extra) -> dict:
    """The environment for a `ds-prompt` subprocess: CPU DeepSpeed, this checkout on the path, and none of the
    process-group variables that in-process tests leave behind (a stale MASTER_PORT would be taken)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=REPO, **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def encode_texts_fn(backbone):
    tok = backbone.tokenizer

    def encode(texts):
        batch = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = backbone.model.base_model(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).last_hidden_state
        return mean_pool(h, batch["attention_mask"])
    return encode


def prompted_tiny(arch: str, prompt_length: int = 5, head: str = "auto", task=PAIR_TASK, seed: int = 0):
    bb = load_backbone(f"tiny:{arch}", dtype="fp32")
    torch.manual_seed(seed)
    prompt = new_soft_prompt(prompt_length, bb.d_model, torch.randn(prompt_length, bb.d_model) * 0.5)
    head_mod = build_head(head, bb.model, bb.tokenizer, bb.family, task, encode_texts_fn(bb))
    model = PromptedModel(bb.model, bb.family, prompt, head_mod)
    enc = TemplateEncoder(task, bb.tokenizer, bb.family, max_length=64, prompt_length=prompt_length)
    return bb, model, enc


def batch_of(bb, enc, pairs, labels=None):
    examples = [SimpleNamespace(texts=p, label=(labels[i] if labels else 0)) for i, p in enumerate(pairs)]
    encoded = [enc.encode(e) for e in examples]
    return encoded, collate(encoded, bb.tokenizer.pad_token_id, left_pad=bb.family is Family.CAUSAL)
