"""Wrappers ds_prompt puts around a backbone's layers (activation checkpointing), and how to see through them."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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


def unwrapped(layer: nn.Module) -> nn.Module:
    """The HF layer inside ds_prompt's wrapper (or `layer` itself)."""
    return layer.layer if isinstance(layer, CheckpointedLayer) else layer
