"""A frozen backbone + soft prompt + class head: [batch of token ids] -> [batch, classes] logits."""
from __future__ import annotations

import torch
from torch import nn

from ds_prompt.errors import UserError
from ds_prompt.models.family import Family
from ds_prompt.models.heads import LabelWordHead, LinearHead, SimilarityHead, head_transform, mean_pool
from ds_prompt.models.shortcuts import can_share_prefix, eligible, last_layer_at, shared_prefix_cache
from ds_prompt.models.soft_prompt import SoftPrompt, prepend_prompt
from ds_prompt.models.t5_step import use_factored_cross_attention


def causal_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, so a left-padded row is positioned as if unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PromptedModel(nn.Module):
    """Backbone (frozen) with a prompt module and a head.

    `prompt` is any module called as prompt(batch_size, dtype, **prompt_inputs) -> [B, L, d] (a `SoftPrompt`,
    or SPT's memory-bank prompt). `head` maps the representation at the scoring position to class logits.
    `shortcuts` (default on) computes the same logits and prompt gradient with less work where the
    architecture allows: the last layer at the scoring position only, and a causal model's shared prompt
    prefix once per batch (`models.shortcuts`); off, the plain full forward runs (ablation, activation hooks).
    """

    def __init__(self, backbone: nn.Module, family: Family, prompt: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.prompt = prompt
        self.head = head
        self._transform = head_transform(backbone, family) if isinstance(head, LabelWordHead) else None
        self.shortcuts = True
        if family is Family.SEQ2SEQ:  # one decoder query: cross-attention without projecting the encoder
            use_factored_cross_attention(backbone.get_decoder())

    def train(self, mode: bool = True) -> "PromptedModel":
        """Train mode for the prompt/head only: the frozen backbone always stays in eval mode (no dropout),
        so steps are deterministic and resumable, also after an evaluation switched modes back."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def trainable_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def _embed(self, input_ids, attention_mask, prompt_inputs):
        embeds = self.backbone.get_input_embeddings()(input_ids)
        prompt = self.prompt(input_ids.shape[0], embeds.dtype, **prompt_inputs)
        embeds, mask = prepend_prompt(prompt, embeds, attention_mask)
        return embeds, mask, prompt.shape[1]

    def representation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor,
                       **prompt_inputs) -> torch.Tensor:
        """[B, d]: hidden state at the scoring position (mask slot / last token / first decoder step), or the
        mean-pooled prompted input for embedding-only encoders."""
        embeds, mask, n_prompt = self._embed(input_ids, attention_mask, prompt_inputs)
        if self.family is Family.SEQ2SEQ:
            enc = self.backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            start = torch.full((embeds.shape[0], 1), self.backbone.config.decoder_start_token_id,
                               dtype=torch.long, device=embeds.device)
            dec = self.backbone.get_decoder()(input_ids=start, encoder_hidden_states=enc,
                                              encoder_attention_mask=mask, use_cache=False)
            return dec.last_hidden_state[:, 0]
        base = self.backbone.base_model
        fast = self.shortcuts and self.family is not Family.ENCODER and eligible(self.backbone)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self.family is Family.CAUSAL:
            if fast and type(self.prompt) is SoftPrompt and can_share_prefix(self.backbone):
                return self._causal_shared_prefix(input_ids, attention_mask, rows)
            embeds, mask, _ = self._embed(input_ids, attention_mask, prompt_inputs)
            kwargs = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=causal_position_ids(mask),
                          use_cache=False)
            if fast:
                last = torch.full_like(rows, embeds.shape[1] - 1)
                return last_layer_at(self.backbone, lambda: base(**kwargs), rows, last, mask.bool())
            return base(**kwargs).last_hidden_state[:, -1]
        embeds, mask, n_prompt = self._embed(input_ids, attention_mask, prompt_inputs)
        if fast:
            return last_layer_at(self.backbone, lambda: base(inputs_embeds=embeds, attention_mask=mask), rows,
                                 score_index + n_prompt, mask.bool())
        hidden = base(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        if self.family is Family.ENCODER:
            return mean_pool(hidden, mask)
        return hidden[rows, score_index + n_prompt]

    def _causal_shared_prefix(self, input_ids, attention_mask, rows) -> torch.Tensor:
        """Causal representation with the prompt (one for every row) run once as a shared key/value prefix."""
        embeds = self.backbone.get_input_embeddings()(input_ids)
        prefix = self.prompt(1, embeds.dtype)
        cache = shared_prefix_cache(self.backbone, prefix, input_ids.shape[0])
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], prefix.shape[1]), attention_mask], 1)
        positions = causal_position_ids(mask)[:, prefix.shape[1]:]

        def run():
            self.backbone.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     past_key_values=cache, use_cache=True)
        last = torch.full_like(rows, embeds.shape[1] - 1)
        return last_layer_at(self.backbone, run, rows, last, mask.bool(), prefix_cache=cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor,
                **prompt_inputs) -> torch.Tensor:
        """Class logits [B, classes] in fp32."""
        h = self.representation(input_ids, attention_mask, score_index, **prompt_inputs)
        if self._transform is not None:
            h = self._transform(h)
        return self.head(h)


def build_head(kind: str, backbone, tokenizer, family: Family, task, encode_texts) -> nn.Module:
    """The head for `family`: label words for LM families; similarity (default) or linear for encoders.

    `encode_texts(list[str]) -> [n, d]` pools frozen-model embeddings of texts (for label descriptions).
    """
    if kind == "auto":
        kind = "similarity" if family is Family.ENCODER else "label_words"
    if kind == "label_words":
        if family is Family.ENCODER:
            raise UserError("--head label_words needs an LM head but this model is an embedding-only encoder: "
                            "use --head similarity or --head linear")
        return LabelWordHead.from_model(backbone, tokenizer, task.label_words)
    if kind == "similarity":
        return SimilarityHead(encode_texts(list(task.label_descriptions)))
    if kind == "linear":
        d = backbone.get_input_embeddings().embedding_dim
        return LinearHead(d, task.num_labels)
    raise UserError(f"unknown --head '{kind}': use auto, label_words, similarity or linear")


def new_soft_prompt(length: int, d_model: int, initial: torch.Tensor | None = None) -> SoftPrompt:
    prompt = SoftPrompt(length, d_model)
    if initial is not None:
        prompt.weight.data.copy_(initial)
    return prompt
