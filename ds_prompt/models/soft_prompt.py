"""The soft prompt: `length` trainable vectors prepended to the frozen model's input embeddings."""
from __future__ import annotations

import math

import torch
from torch import nn

from ds_prompt.artifacts import check_prompt_fits, load_prompt_tensor
from ds_prompt.config import InitSpec
from ds_prompt.dist import gathered
from ds_prompt.errors import UserError


class SoftPrompt(nn.Module):
    """Prompt embeddings P of shape [length, d_model], kept in fp32 (the master copy).

    Lives in its own submodule so ZeRO-3 gathers it when `forward` is called. `forward` casts to the
    backbone's compute dtype, so a bf16 backbone still trains an fp32 prompt.
    """

    def __init__(self, length: int, d_model: int):
        super().__init__()
        if length < 1:
            raise UserError(f"--prompt_length {length} must be >= 1")
        self.weight = nn.Parameter(torch.zeros(length, d_model, dtype=torch.float32))

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def forward(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """[batch, length, d_model] in `dtype`."""
        return self.weight.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)


def prepend_prompt(prompt: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor):
    """Prepend `prompt` [B, L, d] to `inputs_embeds` [B, T, d]; the mask gets L leading ones.

    Returns (embeds [B, L+T, d], mask [B, L+T]). Padding stays where the tokenizer put it (right for encoders,
    left for causal models): prompt positions always attend and are attended to.
    """
    ones = attention_mask.new_ones(attention_mask.shape[0], prompt.shape[1])
    return torch.cat([prompt, inputs_embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


def _vocab_rows(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    # Under ZeRO-3 the embedding is partitioned (shape 0 on every rank): gather before reading rows.
    with gathered(embedding.weight):
        return embedding.weight[ids].detach().float().clone()


def init_prompt_tensor(init: InitSpec | str, length: int, embedding: nn.Embedding, tokenizer,
                       seed: int) -> torch.Tensor:
    """An initial prompt [length, d] from an init spec (`config.InitSpec`; a string is parsed). Same seed -> same
    tensor."""
    spec = InitSpec.parse(init)
    d = embedding.embedding_dim
    gen = torch.Generator().manual_seed(seed)
    if spec.kind == "library":  # resolved by the recipe (recipes.prompt_tuning) before the model is built
        raise UserError(f"--init {spec}: a library spec must be resolved to its file first "
                        f"(ds_prompt.transfer.library_index.resolve_library_init)")
    if spec.kind == "normal":
        return torch.randn(length, d, generator=gen) * spec.std
    if spec.kind == "uniform":
        bound = math.sqrt(1.0 / d)
        return (torch.rand(length, d, generator=gen) * 2 - 1) * bound
    if spec.kind == "vocab":
        # Lester et al.: sample rows among the 5000 most frequent tokens (low ids in most vocabularies).
        high = min(5000, embedding.num_embeddings)
        return _vocab_rows(embedding, torch.randint(0, high, (length,), generator=gen))
    if spec.kind == "text":
        ids = tokenizer(spec.arg, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError(f"--init '{spec}' has no words: pass e.g. text:classify the sentiment")
        ids = torch.tensor((ids * math.ceil(length / len(ids)))[:length])
        return _vocab_rows(embedding, ids)
    assert spec.kind == "file", spec  # InitSpec.parse admits no other kind
    tensor = load_prompt_tensor(spec.arg)
    check_prompt_fits(tensor, d, spec.arg)
    if tensor.shape[0] != length:
        raise UserError(f"--init prompt {spec.arg} has {tensor.shape[0]} tokens but --prompt_length is {length}: "
                        f"pass --prompt_length {tensor.shape[0]}")
    return tensor.float()
