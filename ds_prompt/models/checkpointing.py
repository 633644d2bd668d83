"""Activation checkpointing for a frozen backbone that runs in eval mode.

HF's `gradient_checkpointing_enable` only checkpoints in train mode, but ds_prompt keeps the frozen backbone
in eval mode (no dropout), so we wrap each transformer layer instead: with grad enabled its forward runs under
non-reentrant `torch.utils.checkpoint`, keeping only the layer inputs and recomputing the rest in backward.
Only the prompt needs gradients, so memory falls from O(layers x activations) to O(layers x inputs).
"""
from __future__ import annotations

from torch import nn

from ds_prompt.models.ffn import layer_stacks
from ds_prompt.models.wrappers import CheckpointedLayer


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every layer of every stack of `model` in place; returns the number of wrapped layers."""
    count = 0
    for stack in layer_stacks(model):
        layers = [x if isinstance(x, CheckpointedLayer) else CheckpointedLayer(x) for x in stack.layers]
        stack.replace(layers)
        count += len(layers)
    return count
