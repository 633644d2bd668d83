"""Small builders the recipes wire together: backbone + head + prompt -> PromptedModel, and encoded data."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_prompt.data.encoding import TemplateEncoder
from ds_prompt.dist import gathered
from ds_prompt.models.backbone import Backbone, load_backbone
from ds_prompt.models.heads import mean_pool
from ds_prompt.models.prompted import PromptedModel, build_head, new_soft_prompt
from ds_prompt.models.soft_prompt import init_prompt_tensor


@dataclass
class Prompted:
    backbone: Backbone
    model: PromptedModel
    encoder: TemplateEncoder
    task: object


def pooled_text_embeddings(backbone: Backbone):
    """texts -> [n, d] mean-pooled frozen-model embeddings (no prompt), for label descriptions."""
    tok, model = backbone.tokenizer, backbone.model

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        dev = model.get_input_embeddings().weight.device
        # Runs before the engine exists, so ZeRO-3 hooks cannot gather weights: gather them here (encoders
        # with a similarity head are small).
        with torch.no_grad(), gathered(list(model.parameters())):
            h = model.base_model(input_ids=batch["input_ids"].to(dev),
                                 attention_mask=batch["attention_mask"].to(dev)).last_hidden_state
        return mean_pool(h.float(), batch["attention_mask"].to(dev)).cpu()
    return encode


def build_prompted(backbone: Backbone, task, prompt_length: int, max_length: int, head: str = "auto",
                   init: str | torch.Tensor = "normal:0.02", seed: int = 0) -> Prompted:
    """A PromptedModel for `task` on `backbone`, its prompt initialized from `init` (spec or tensor)."""
    emb = backbone.model.get_input_embeddings()
    initial = init if torch.is_tensor(init) else init_prompt_tensor(init, prompt_length, emb, backbone.tokenizer,
                                                                    seed)
    head_mod = build_head(head, backbone.model, backbone.tokenizer, backbone.family, task,
                          pooled_text_embeddings(backbone))
    model = PromptedModel(backbone.model, backbone.family, new_soft_prompt(prompt_length, backbone.d_model, initial),
                          head_mod)
    encoder = TemplateEncoder(task, backbone.tokenizer, backbone.family, max_length, prompt_length)
    return Prompted(backbone, model, encoder, task)


def load_model_for(name: str, family=None, dtype="auto", quantization=None, attn="sdpa") -> Backbone:
    return load_backbone(name, family=family, dtype=dtype, attn_implementation=attn, quantization=quantization)
