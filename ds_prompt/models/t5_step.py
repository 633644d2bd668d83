"""Cross-attention of ONE decoder query (T5 scored at the first decoder step) without projecting the encoder.

The standard path projects every encoder position to keys and values in every decoder layer: 2*T*d*inner
multiply-adds per example and layer, about 1/7 of a T5 prompt-tuning step (forward and backward). With a single
query the projections can be moved to the query side (exact algebra, only the summation order changes):

    scores_h = q_h . (H Wk_h^T)^T = (q_h Wk_h) . H^T          [B, h, T]: q_h Wk_h is one d-vector per head
    out_h    = p_h (H Wv_h^T)     = (p_h H) Wv_h^T            p_h H is one d-vector per head

which costs 2*T*d*h instead of 2*T*d*inner (h heads of width d_kv = inner/h): d_kv (64 for T5) times fewer
FLOPs, and the gradient to the encoder states (what reaches the prompt) takes the same shortcut backwards.

Applies where the projection weights are plain dense tensors; ZeRO-3 partitioned (gathered by module hooks)
and bitsandbytes-quantized projections keep the standard path.
"""
from __future__ import annotations

import torch
from torch import nn

from ds_prompt import dist
from ds_prompt.models.checkpointing import CheckpointedLayer


def _cross_attention_modules(decoder: nn.Module) -> list[nn.Module]:
    modules = []
    for block in getattr(decoder, "block", []):
        block = block.layer if isinstance(block, CheckpointedLayer) else block
        layers = getattr(block, "layer", None)
        attn = getattr(layers[1], "EncDecAttention", None) if layers is not None and len(layers) > 2 else None
        if attn is not None:
            modules.append(attn)
    return modules


def _eligible(attn: nn.Module) -> bool:
    """Checked at every call: ZeRO-3 may partition the weights after the model was built."""
    linears = [getattr(attn, name, None) for name in ("q", "k", "v", "o")]
    return (all(type(m) is nn.Linear and m.bias is None for m in linears)
            and not any(dist.is_zero3_param(m.weight) for m in linears)
            and not getattr(attn, "has_relative_attention_bias", False))


def one_query_cross_attention(attn: nn.Module, hidden: torch.Tensor, encoder: torch.Tensor,
                              mask: torch.Tensor | None) -> torch.Tensor:
    """T5Attention(hidden [B, 1, d], key_value_states=encoder [B, T, d]) for one query, in the factored order.
    `mask` is the HF attention mask as the attention layer receives it ([B, 1, q, T]: bool keep-mask, or
    additive float) or None. Scores are not scaled (T5 folds the scale into its weights)."""
    b, heads, dkv = hidden.shape[0], attn.n_heads, attn.key_value_proj_dim
    q = attn.q(hidden).view(b, heads, dkv)                               # [B, h, dkv]
    wk = attn.k.weight.view(heads, dkv, -1)                              # [h, dkv, d]
    wv = attn.v.weight.view(heads, dkv, -1)
    qk = torch.einsum("bhe,hed->bhd", q, wk)                             # [B, h, d]
    scores = torch.einsum("bhd,btd->bht", qk, encoder).float()
    if mask is not None:
        mask = mask[:, :, -1, :]                                          # [B or 1, 1 or h, T]
        scores = (scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool
                  else scores + mask.float())
    probs = torch.softmax(scores, dim=-1).to(encoder.dtype)
    pooled = torch.einsum("bht,btd->bhd", probs, encoder)                # [B, h, d]
    context = torch.einsum("bhd,hed->bhe", pooled, wv).reshape(b, 1, heads * dkv)
    return attn.o(context)


_FACTORED_CLASSES: dict[type, type] = {}


def _factored_class(base: type) -> type:
    """A subclass of the HF attention class whose forward takes the factored path when it applies."""
    if base not in _FACTORED_CLASSES:
        def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None,
                    past_key_values=None, **kwargs):
            if (key_value_states is None or past_key_values is not None or hidden_states.shape[1] != 1
                    or self.training or not (mask is None or isinstance(mask, torch.Tensor))
                    or not _eligible(self)):
                return base.forward(self, hidden_states, mask=mask, key_value_states=key_value_states,
                                    position_bias=position_bias, past_key_values=past_key_values, **kwargs)
            return one_query_cross_attention(self, hidden_states, key_value_states, mask), position_bias, None
        _FACTORED_CLASSES[base] = type(f"Factored{base.__name__}", (base,), {"forward": forward})
    return _FACTORED_CLASSES[base]


def use_factored_cross_attention(decoder: nn.Module) -> int:
    """Switch the decoder's cross-attention layers to the factored one-query path (in place; other calls
    keep the standard path). A class swap, not a per-call patch, so activation checkpointing recomputes the
    same path in backward. Returns the number of layers switched."""
    modules = _cross_attention_modules(decoder)
    for attn in modules:
        if type(attn) not in _FACTORED_CLASSES.values():
            attn.__class__ = _factored_class(type(attn))
    return len(modules)
