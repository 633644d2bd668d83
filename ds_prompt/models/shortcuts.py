"""Exact compute savings of a prompted forward: the same class logits and prompt gradient, fewer FLOPs.

Class logits read one position per row (the mask slot, the last token, or T5's first decoder step), and the
prompt is the only thing being trained. Two parts of the obvious forward are therefore wasted work:

1. **Last layer at the scoring position** (MLM and causal families). The final layer's output is read at one
   position, so only that position needs its query, attention output, FFN and final norm; every position still
   needs its keys and values. `last_layer_at` runs the stack with its last layer swapped for a capture that
   passes its input through, then computes that layer for the scoring rows only. It saves about 1/L of the
   layer FLOPs (T5's decoder already runs a single step, see `t5_step`).
2. **Shared prompt prefix** (causal family, one prompt for the whole batch). Under causal attention the prompt
   positions see only the prompt, so their hidden states in every layer are identical across the batch: the
   prefix is computed once (batch 1) and its keys/values are shared by every row (a broadcast, so backward sums
   the rows' gradients into the one prefix, as the full forward does). With a 20-vector prompt on 30-token
   inputs that is 40% of the layer FLOPs at batch 16. Not used with activation checkpointing (a recomputed
   layer would append to the shared cache twice) or when the rows' prompts differ (SPT).

Both are switched off by `PromptedModel.shortcuts = False` (`full_forward`), which activation recording and
the ablation use; tests check logits and prompt gradients against the full forward per architecture, with
padding. The scoring query's attention is plain matmuls over an explicit key mask (see `_attend`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ds_prompt.models.ffn import layer_stacks
from ds_prompt.models.wrappers import CheckpointedLayer, unwrapped


class _Capture(nn.Module):
    """Stands in for the last layer: records the layer's input and keyword arguments, passes the input on."""

    def __init__(self):
        super().__init__()
        self.hidden = None
        self.kwargs = None

    def forward(self, hidden_states, *args, **kwargs):
        self.hidden, self.kwargs = hidden_states, kwargs
        return hidden_states


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, H*hd] -> [B, H, T, hd]."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)


def _attend(q, k, v, key_mask, scale) -> torch.Tensor:
    """One query per row: q [B, H, 1, hd] over k/v [B, Hkv, T, hd] where key_mask [B, T]; -> [B, 1, H*hd].

    Plain matmuls (a single query makes the score matrix one row, so nothing is gained from a fused kernel, and
    FLOP counters see every operation); grouped query heads share their key/value head without copying it.
    The softmax runs in fp32, as Hugging Face's eager attention does.
    """
    batch, heads, _, head_dim = q.shape
    q = q.reshape(batch, k.shape[1], heads // k.shape[1], head_dim)          # [B, Hkv, group, hd]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale                    # [B, Hkv, group, T]
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).reshape(batch, 1, heads * head_dim)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _with_prefix(k, v, cached):
    if cached is None:
        return k, v
    return torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)


def _llama_row(layer, x, kwargs, rows, cols, key_mask, cached):
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    k, v = _heads(attn.k_proj(h), attn.head_dim), _heads(attn.v_proj(h), attn.head_dim)
    x_row = x[rows, cols].unsqueeze(1)
    q = _heads(attn.q_proj(h[rows, cols].unsqueeze(1)), attn.head_dim)
    cos, sin = kwargs["position_embeddings"]
    cos, sin = cos.expand(x.shape[0], -1, -1), sin.expand(x.shape[0], -1, -1)
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    cq, sq = cos[rows, cols][:, None, None], sin[rows, cols][:, None, None]
    q = q * cq + _rotate_half(q) * sq
    k, v = _with_prefix(k, v, cached)
    y = x_row + attn.o_proj(_attend(q, k, v, key_mask, attn.scaling))
    return y + layer.mlp(layer.post_attention_layernorm(y))


def _gpt2_row(block, x, kwargs, rows, cols, key_mask, cached):
    attn = block.attn
    h = block.ln_1(x)
    w, b, d = attn.c_attn.weight, attn.c_attn.bias, attn.split_size
    if tuple(w.shape) == (h.shape[-1], 3 * d):  # fused [q | k | v] Conv1D: project the query for one row only
        q = torch.addmm(b[:d], h[rows, cols], w[:, :d]).unsqueeze(1)
        k, v = (h @ w[:, d:] + b[d:]).split(d, dim=2)
    else:  # partitioned (ZeRO-3) or quantized weights: let the module gather/dequantize them
        q, k, v = attn.c_attn(h).split(d, dim=2)
        q = q[rows, cols].unsqueeze(1)
    q = _heads(q, attn.head_dim)
    k, v = _with_prefix(_heads(k, attn.head_dim), _heads(v, attn.head_dim), cached)
    y = x[rows, cols].unsqueeze(1) + attn.c_proj(_attend(q, k, v, key_mask, attn.scaling))
    return y + block.mlp(block.ln_2(y))


def _bert_row(layer, x, kwargs, rows, cols, key_mask, cached):
    sa = layer.attention.self
    x_row = x[rows, cols].unsqueeze(1)
    q = _heads(sa.query(x_row), sa.attention_head_size)
    k, v = _heads(sa.key(x), sa.attention_head_size), _heads(sa.value(x), sa.attention_head_size)
    a = layer.attention.output(_attend(q, k, v, key_mask, sa.scaling), x_row)
    return layer.output(layer.intermediate(a), a)


@dataclass(frozen=True)
class _Arch:
    row: Callable            # (layer, x, kwargs, rows, cols, key_mask, prefix (k, v) or None) -> [B, 1, d]
    final_norm: str | None   # attribute of the base model applied after the stack
    causal: bool


def _arch(model: nn.Module) -> _Arch | None:
    """The last-layer recipe of `model`, or None when its architecture (or a config option) is not covered."""
    cfg = model.config
    kind = getattr(cfg, "model_type", "")
    if kind in ("llama", "qwen2") and not getattr(cfg, "use_sliding_window", False):
        return _Arch(_llama_row, "norm", True)
    if kind == "gpt2" and not (cfg.scale_attn_by_inverse_layer_idx or getattr(cfg, "add_cross_attention", False)):
        return _Arch(_gpt2_row, "ln_f", True)
    if kind in ("bert", "roberta", "electra") and getattr(cfg, "position_embedding_type", "absolute") == "absolute" \
            and not getattr(cfg, "is_decoder", False):
        return _Arch(_bert_row, None, False)
    return None


def eligible(model: nn.Module) -> bool:
    """Whether `model`'s last layer can be computed at the scoring position only."""
    return _arch(model) is not None


def last_layer_at(model: nn.Module, run: Callable[[], object], rows: torch.Tensor, cols: torch.Tensor,
                  key_mask: torch.Tensor, prefix_cache=None) -> torch.Tensor:
    """[B, d]: the final hidden state of `model` (a HF backbone) at (rows, cols), its last layer computed there only.

    `run()` calls the base model (output ignored); `key_mask` [B, T_keys] marks the keys the scoring positions
    attend to (padding and, for causal models, later positions removed; a shared prefix's keys included).
    `prefix_cache`: the `shared_prefix_cache` that `run()` passed to the model, whose last-layer entry still
    holds only the prefix (the capture never appends to it).
    """
    arch = _arch(model)
    stack = layer_stacks(model)[-1]
    index = len(stack.layers) - 1
    last = stack.layers[index]
    capture = _Capture()
    stack.layers[index] = capture
    try:
        run()
    finally:
        stack.layers[index] = last
    layer = unwrapped(last)
    cached = None
    if prefix_cache is not None:
        cached = prefix_cache.layers[index].keys, prefix_cache.layers[index].values
    out = arch.row(layer, capture.hidden, capture.kwargs, rows, cols, key_mask, cached)[:, 0]
    norm = getattr(model.base_model, arch.final_norm) if arch.final_norm else None
    return norm(out) if norm is not None else out


def shared_prefix_cache(model: nn.Module, prefix: torch.Tensor, batch_size: int):
    """A cache holding the causal `model`'s keys/values of `prefix` [1, P, d] (computed once), broadcast to
    `batch_size` rows, for a second call on the rest of the sequence."""
    from transformers import DynamicCache
    base = model.base_model
    cache = DynamicCache(config=model.config)
    positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
    base(inputs_embeds=prefix, position_ids=positions, past_key_values=cache, use_cache=True)
    shared = [(layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
              for layer in cache.layers]
    return DynamicCache(ddp_cache_data=shared, config=model.config)


def can_share_prefix(model: nn.Module) -> bool:
    """Causal architecture covered here and no activation checkpointing (see the module docstring)."""
    arch = _arch(model)
    if arch is None or not arch.causal:
        return False
    return not any(isinstance(layer, CheckpointedLayer) for s in layer_stacks(model) for layer in s.layers)


@contextlib.contextmanager
def full_forward(prompted: nn.Module):
    """Within the block, `prompted` (a PromptedModel or an engine wrapping one) runs the plain full forward."""
    target = getattr(prompted, "module", prompted)
    before = target.shortcuts
    target.shortcuts = False
    try:
        yield
    finally:
        target.shortcuts = before
