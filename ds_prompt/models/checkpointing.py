"""Activation checkpointing for a frozen backbone that runs in eval mode.

HF's `gradient_checkpointing_enable` only checkpoints in train mode, but ds_prompt keeps the frozen backbone
in eval mode (no dropout), so we wrap each transformer layer instead: with grad enabled its forward runs under
non-reentrant `torch.utils.checkpoint`, keeping only the layer inputs and recomputing the rest in backward.
Only the prompt needs gradients, so memory falls from O(layers x activations) to O(layers x inputs).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ds_prompt.models.ffn import layer_stacks


class CheckpointedLayer(nn.Module):
    """Runs `layer` under non-reentrant checkpointing when gradients are being recorded."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def __getattr__(self, name):  # HF code reads attributes of its layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(self.layer, *args, use_reentrant=False, **kwargs)
        return self.layer(*args, **kwargs)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every layer of every stack of `model` in place; returns the number of wrapped layers."""
    count = 0
    for stack in layer_stacks(model):
        layers = [l if isinstance(l, CheckpointedLayer) else CheckpointedLayer(l) for l in stack.layers]
        stack.replace(layers)
        count += len(layers)
    return count
