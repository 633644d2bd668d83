"""FFN intermediate activations of a prompted frozen model, recorded with forward hooks (every layer, any family).

The FFN intermediate is the vector between the two FFN matrices, after the nonlinearity (REFERENCE §1):
- BERT / RoBERTa / ELECTRA / MiniLM: output of `...layer.N.intermediate` (dense + activation);
- GPT-2: output of `...h.N.mlp.act`;
- Llama / Qwen2 / Mistral: input of `...layers.N.mlp.down_proj`, i.e. act(gate_proj(x)) * up_proj(x);
- T5 (ReLU or gated): input of `...block.N.layer.K.DenseReluDense.wo`; the decoder FFNs by default (at the first
  decoding step, the position PromptedModel scores), the encoder FFNs optionally.

One function boundary, `record_ffn_activations`, so that the recording can move to `ds_prompt.models.ffn` later.
Hooks only read (they return None), and are removed when the call returns, so the model output is unchanged.
Under ZeRO-3 pass the DeepSpeed engine (or its module): every rank must make the same call (the forward gathers
partitioned weights collectively).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ds_prompt.errors import UserError

# (module path suffix, what to capture): "output" of the nonlinearity module, or "input" of the down projection.
FFN_SITE_RULES = (("intermediate", "output"), ("mlp.act", "output"), ("mlp.down_proj", "input"),
                  ("DenseReluDense.wo", "input"))
SEQ2SEQ_PARTS = ("decoder", "encoder", "both")


@dataclass(frozen=True)
class FFNSite:
    """One layer's FFN intermediate: `name` is the hooked module's path in the HF model."""
    name: str
    module: nn.Module
    capture: str        # "output" or "input"
    decoder: bool       # a T5 decoder block (one position: the first decoding step)


def _matches(name: str, suffix: str) -> bool:
    parts, want = name.split("."), suffix.split(".")
    return parts[-len(want):] == want


def ffn_sites(hf_model: nn.Module, seq2seq_part: str = "decoder") -> list[FFNSite]:
    """The FFN intermediate of every layer, in forward order (T5: encoder blocks before decoder blocks)."""
    if seq2seq_part not in SEQ2SEQ_PARTS:
        raise UserError(f"--ffn_part '{seq2seq_part}' is unknown: use one of {', '.join(SEQ2SEQ_PARTS)}")
    sites = []
    for name, module in hf_model.named_modules():
        for suffix, capture in FFN_SITE_RULES:
            if _matches(name, suffix):
                sites.append(FFNSite(name, module, capture, decoder=name.startswith("decoder.")))
    if not sites:
        raise UserError(f"no FFN layers found in {type(hf_model).__name__}: activated neurons support BERT-like, "
                        f"GPT-2, Llama/Qwen2-like and T5 models")
    if any(s.decoder for s in sites) and seq2seq_part != "both":
        sites = [s for s in sites if s.decoder == (seq2seq_part == "decoder")]
    return sites


def _select(acts: torch.Tensor, site: FFNSite, attention_mask: torch.Tensor, position: int | None) -> torch.Tensor:
    """[B, T, d_ff] -> [B, d_ff] at `position`, or [attended tokens, d_ff] when position is None."""
    if site.decoder:  # PromptedModel runs the decoder for one step: every row has exactly one position
        return acts[:, 0]
    if position is not None:
        return acts[:, position]
    n_prompt = acts.shape[1] - attention_mask.shape[1]
    ones = attention_mask.new_ones(attention_mask.shape[0], n_prompt)
    keep = torch.cat([ones, attention_mask], dim=1).bool()
    return acts[keep]


def record_ffn_activations(prompted_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           score_index: torch.Tensor | None = None, position: int | None = None,
                           seq2seq_part: str = "decoder", **prompt_inputs) -> dict[str, torch.Tensor]:
    """FFN intermediate activations of one no-grad forward of `prompted_model` (a PromptedModel or its engine).

    Input is [prompt; input_ids] as PromptedModel builds it. Returns {layer name: fp32 CPU tensor}, in layer order:
    - position=None: [attended tokens, d_ff], the prompt and non-padding tokens of every row, row after row;
    - position=k: [batch, d_ff] at index k of the prompted sequence (0 = the first prompt token, REFERENCE §1);
    T5 decoder layers always give [batch, d_ff] at the first decoding step.
    """
    module = getattr(prompted_model, "module", prompted_model)
    sites = ffn_sites(module.backbone, seq2seq_part)
    recorded: dict[str, torch.Tensor] = {}

    def hook_for(site: FFNSite):
        def keep(acts):
            recorded[site.name] = _select(acts.detach(), site, attention_mask, position).float().cpu()
        if site.capture == "output":
            return site.module.register_forward_hook(lambda mod, args, out: keep(out))
        return site.module.register_forward_pre_hook(lambda mod, args: keep(args[0]))

    if score_index is None:
        score_index = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    handles = [hook_for(site) for site in sites]
    try:
        with torch.no_grad():
            prompted_model(input_ids, attention_mask, score_index, **prompt_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {site.name: recorded[site.name] for site in sites}


class FixedPrompt(nn.Module):
    """A prompt module without parameters that returns a given [L, d] tensor: probes a frozen model with
    several prompts in turn (also under ZeRO-3, where swapping a registered parameter is not possible)."""

    def __init__(self, prompt: torch.Tensor):
        super().__init__()
        self.value = prompt

    def set(self, prompt: torch.Tensor) -> None:
        self.value = prompt

    def forward(self, batch_size: int, dtype: torch.dtype, **_) -> torch.Tensor:
        """[batch, L, d] in `dtype`."""
        return self.value.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)
