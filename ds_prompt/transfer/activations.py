"""FFN intermediate activations of a prompted frozen model, recorded with forward hooks (every layer, any family).

The FFN intermediate is the vector between the two FFN matrices, after the nonlinearity (REFERENCE §1):
- BERT / RoBERTa / ELECTRA / MiniLM: output of `...layer.N.intermediate` (dense + activation);
- GPT-2: output of `...h.N.mlp.act`;
- Llama / Qwen2 / Mistral: input of `...layers.N.mlp.down_proj`, i.e. act(gate_proj(x)) * up_proj(x);
- T5 (ReLU or gated): input of `...block.N.layer.K.DenseReluDense.wo`; the decoder FFNs by default (at the first
  decoding step, the position PromptedModel scores), the encoder FFNs optionally.

Which value is binarized for a gated FFN (Llama/Qwen2/Mistral, gated T5), `neuron`:
- "product" (default): act(gate_proj(x)) * up_proj(x), the vector the down projection reads (the value that
  plays the role of act(x W1) in a plain FFN);
- "gate": gate_proj(x) (T5: wi_0(x)), so a neuron counts as active when its gate is open, gate > 0, which for
  SiLU/GELU gates is act(gate) > 0 too. Plain FFNs (BERT, GPT-2, ReLU T5) have no gate: "gate" is refused.

Which position, `position`:
- SCORE ("score", the default of `ds-prompt indicators`): where the family reads its class, the position that
  has seen the whole prompt, as the papers' released code reads the `<mask>` slot: the mask slot (MLM), the
  last position (causal, left-padded), the first decoding step (T5 decoder FFNs). Embedding-only encoders pool
  every token, so for them SCORE means every token (as position=None);
- an int k: index k of the prompted sequence (0 = the first prompt vector, which on a causal LM has seen only
  itself); None: every attended token.

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
from ds_prompt.models.family import Family
from ds_prompt.models.shortcuts import full_forward

# (module path suffix, what to capture): "output" of the nonlinearity module, or "input" of the down projection.
FFN_SITE_RULES = (("intermediate", "output"), ("mlp.act", "output"), ("mlp.down_proj", "input"),
                  ("DenseReluDense.wo", "input"))
# Gated FFNs only: the gate projection's output (pre-activation gate).
GATE_SITE_RULES = (("mlp.gate_proj", "output"), ("DenseReluDense.wi_0", "output"))
NEURON_VALUES = ("product", "gate")
SEQ2SEQ_PARTS = ("decoder", "encoder", "both")
SCORE = "score"


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


def ffn_sites(hf_model: nn.Module, seq2seq_part: str = "decoder", neuron: str = "product") -> list[FFNSite]:
    """The FFN intermediate (or, neuron="gate", the gate) of every layer, in forward order (T5: encoder blocks
    before decoder blocks)."""
    if seq2seq_part not in SEQ2SEQ_PARTS:
        raise UserError(f"--ffn_part '{seq2seq_part}' is unknown: use one of {', '.join(SEQ2SEQ_PARTS)}")
    if neuron not in NEURON_VALUES:
        raise UserError(f"--neuron '{neuron}' is unknown: use one of {', '.join(NEURON_VALUES)}")
    rules = FFN_SITE_RULES if neuron == "product" else GATE_SITE_RULES
    sites = []
    for name, module in hf_model.named_modules():
        for suffix, capture in rules:
            if _matches(name, suffix):
                sites.append(FFNSite(name, module, capture, decoder=name.startswith("decoder.")))
    if not sites and neuron == "gate":
        raise UserError(f"--neuron gate needs a gated FFN, but {type(hf_model).__name__} has none: use "
                        f"--neuron product")
    if not sites:
        raise UserError(f"no FFN layers found in {type(hf_model).__name__}: activated neurons support BERT-like, "
                        f"GPT-2, Llama/Qwen2-like and T5 models")
    if any(s.decoder for s in sites) and seq2seq_part != "both":
        sites = [s for s in sites if s.decoder == (seq2seq_part == "decoder")]
    return sites


def scoring_positions(family: Family, score_index: torch.Tensor, n_prompt: int) -> torch.Tensor | None:
    """[B] index in the prompted sequence where `family` reads its class (None: every token is pooled)."""
    if family is Family.CAUSAL:
        return torch.full_like(score_index, -1)  # left padding: the last position is every row's last token
    if family is Family.MLM:
        return score_index + n_prompt
    if family is Family.ENCODER:
        return None
    raise UserError("the T5 scoring position is the first decoding step: use --ffn_part decoder with "
                    "--position score, or an explicit --position k for encoder FFNs")


def _select(acts: torch.Tensor, site: FFNSite, attention_mask: torch.Tensor, position: int | str | None,
            family: Family, score_index: torch.Tensor) -> torch.Tensor:
    """[B, T, d_ff] -> [B, d_ff] at `position` (an index, or SCORE: each row's scoring position), or
    [attended tokens, d_ff] when position is None (or SCORE on an embedding-only encoder)."""
    if site.decoder:  # PromptedModel runs the decoder for one step: every row has exactly one position
        return acts[:, 0]
    n_prompt = acts.shape[1] - attention_mask.shape[1]
    if position == SCORE:
        position = scoring_positions(family, score_index, n_prompt)
        if position is not None:
            return acts[torch.arange(acts.shape[0], device=acts.device), position.to(acts.device)]
    if position is not None:
        return acts[:, position]
    ones = attention_mask.new_ones(attention_mask.shape[0], n_prompt)
    keep = torch.cat([ones, attention_mask], dim=1).bool()
    return acts[keep]


def per_token_position(family: Family, position: int | str | None) -> bool:
    """Whether `position` keeps one row per example (else every token of the probe is kept)."""
    return position is not None and not (position == SCORE and family is Family.ENCODER)


def record_ffn_activations(prompted_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           score_index: torch.Tensor | None = None, position: int | str | None = None,
                           seq2seq_part: str = "decoder", neuron: str = "product",
                           **prompt_inputs) -> dict[str, torch.Tensor]:
    """FFN intermediate activations of one no-grad forward of `prompted_model` (a PromptedModel or its engine).

    Input is [prompt; input_ids] as PromptedModel builds it. Returns {layer name: fp32 CPU tensor}, in layer order:
    - position=None: [attended tokens, d_ff], the prompt and non-padding tokens of every row, row after row;
    - position=k: [batch, d_ff] at index k of the prompted sequence (0 = the first prompt token, REFERENCE §1);
    - position=SCORE: [batch, d_ff] at the family's scoring position (see the module docstring);
    T5 decoder layers always give [batch, d_ff] at the first decoding step. `neuron`: "product" or "gate".
    """
    module = getattr(prompted_model, "module", prompted_model)
    sites = ffn_sites(module.backbone, seq2seq_part, neuron)
    recorded: dict[str, torch.Tensor] = {}
    if position == SCORE and module.family is Family.SEQ2SEQ and any(not s.decoder for s in sites):
        scoring_positions(module.family, score_index, 0)  # raises: encoder FFNs have no scoring position

    def hook_for(site: FFNSite):
        def keep(acts):
            recorded[site.name] = _select(acts.detach(), site, attention_mask, position, module.family,
                                          score_index).float().cpu()
        if site.capture == "output":
            return site.module.register_forward_hook(lambda mod, args, out: keep(out))
        return site.module.register_forward_pre_hook(lambda mod, args: keep(args[0]))

    if score_index is None:
        score_index = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    handles = [hook_for(site) for site in sites]
    try:
        with torch.no_grad(), full_forward(prompted_model):  # hooks read every position of every layer
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
