"""FFN intermediate activations of a prompted frozen model, recorded with forward hooks (every layer, any family).

The FFN intermediate is the vector between the two FFN matrices, after the nonlinearity (REFERENCE §1): the
input of each layer's output projection (BERT-like `output.dense`, GPT-2 `c_proj`, Llama-like `down_proj`, T5
`wo`; gated FFNs: act(gate_proj(x)) * up_proj(x)). For T5, the decoder FFNs by default (at the first decoding
step, the position PromptedModel scores), the encoder FFNs optionally.

Which value is binarized for a gated FFN (Llama/Qwen2/Mistral, gated T5), `neuron`:
- "product" (default): act(gate_proj(x)) * up_proj(x), the vector the down projection reads (the value that
  plays the role of act(x W1) in a plain FFN);
- "gate": gate_proj(x) (T5: wi_0(x)), so a neuron counts as active when its gate is open, gate > 0, which for
  SiLU/GELU gates is act(gate) > 0 too. Plain FFNs (BERT, GPT-2, ReLU T5) have no gate: "gate" is refused.

Which position, `position`:
- SCORE ("score", the default of `ds-prompt transfer indicators`): where the family reads its class, the position that
  has seen the whole prompt, as the papers' released code reads the `<mask>` slot: the mask slot (MLM), the
  last position (causal, left-padded), the first decoding step (T5 decoder FFNs). Embedding-only encoders pool
  every token, so for them SCORE means every token (as position=None);
- an int k: index k of the prompted sequence (0 = the first prompt vector, which on a causal LM has seen only
  itself); None: every attended token.

Where the FFNs are, and the hooks, come from `ds_prompt.models.ffn` (its one layout table and its
`record_ffn_activations`); this module adds the indicators' choice of position and stacks and runs the forward
(`prompted_ffn_activations`). Hooks only read (they return None), and are removed when the call returns, so the
model output is unchanged.
Under ZeRO-3 pass the DeepSpeed engine (or its module): every rank must make the same call (the forward gathers
partitioned weights collectively).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ds_prompt.errors import UserError
from ds_prompt.models import ffn
from ds_prompt.models.family import Family
from ds_prompt.models.shortcuts import full_forward

NEURON_VALUES = ffn.NEURON_VALUES
SEQ2SEQ_PARTS = ("decoder", "encoder", "both")
SCORE = "score"


@dataclass(frozen=True)
class FFNSite:
    """One layer's FFN (models.ffn's `FFNRef`) as the indicators read it."""
    ref: ffn.FFNRef
    decoder: bool       # a T5 decoder block (one position: the first decoding step)

    @property
    def name(self) -> str:
        return self.ref.name


def ffn_sites(hf_model: nn.Module, seq2seq_part: str = "decoder") -> list[FFNSite]:
    """Every layer's FFN in forward order (T5: encoder blocks before decoder blocks), from models.ffn's layout
    table; an encoder-decoder model keeps the stacks `seq2seq_part` names."""
    if seq2seq_part not in SEQ2SEQ_PARTS:
        raise UserError(f"--ffn_part '{seq2seq_part}' is unknown: use one of {', '.join(SEQ2SEQ_PARTS)}")
    refs = ffn.ffn_layers(hf_model)
    two_stacks = {ref.role for ref in refs} == {"encoder", "decoder"}  # T5: the decoder runs one step
    sites = [FFNSite(ref, decoder=two_stacks and ref.role == "decoder") for ref in refs]
    if two_stacks and seq2seq_part != "both":
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


def _select(acts: torch.Tensor, one_step: bool, attention_mask: torch.Tensor, position: int | str | None,
            family: Family, score_index: torch.Tensor) -> torch.Tensor:
    """[B, T, d_ff] -> [B, d_ff] at `position` (an index, or SCORE: each row's scoring position), or
    [attended tokens, d_ff] when position is None (or SCORE on an embedding-only encoder)."""
    if one_step:  # PromptedModel runs the decoder for one step: every row has exactly one position
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


def prompted_ffn_activations(prompted_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
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
    sites = ffn_sites(module.backbone, seq2seq_part)
    if position == SCORE and module.family is Family.SEQ2SEQ and any(not s.decoder for s in sites):
        scoring_positions(module.family, score_index, 0)  # raises: encoder FFNs have no scoring position
    if score_index is None:
        score_index = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    one_step = {s.name for s in sites if s.decoder}

    def keep(ref, acts):
        return _select(acts, ref.name in one_step, attention_mask, position, module.family, score_index).float().cpu()
    with torch.no_grad(), full_forward(prompted_model), \
            ffn.record_ffn_activations(module.backbone, [s.ref for s in sites], neuron=neuron, keep=keep) as recorded:
        prompted_model(input_ids, attention_mask, score_index, **prompt_inputs)  # hooks read every position
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
