"""Class scoring heads.

Label-word heads (mlm / causal / seq2seq) score ONLY the label-word rows of the frozen LM head, at the scoring
position only: [batch, d] -> [batch, n_label_ids] -> [batch, classes]. The rows are copied once at build time
(gathered under ZeRO-3), so training never touches the full [vocab, d] output matrix.

Multi-token label words: a word's logit is the mean of its sub-token logits at the scoring position, and a
class's logit is the mean over its words (OpenPrompt's "mean" handler). Embedding-only encoders use a
`SimilarityHead` (cosine to pooled label descriptions, no new weights) or a trainable `LinearHead`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ds_prompt.dist import gathered
from ds_prompt.errors import UserError
from ds_prompt.models.family import Family


def label_word_ids(tokenizer, label_words) -> list[list[list[int]]]:
    """class -> word -> sub-token ids. Words are encoded with a leading space (BPE 'Ġword', SentencePiece
    '▁word'); WordPiece ignores it. Tokens that are pure whitespace are dropped."""
    out = []
    for words in label_words:
        per_class = []
        for word in words:
            ids = [i for i in tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                   if tokenizer.decode([i]).strip()]
            if not ids:
                raise UserError(f"label word '{word}' has no tokens in this tokenizer: choose another word")
            per_class.append(ids)
        out.append(per_class)
    return out


def class_matrix(ids: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique ids [n], averaging matrix [classes, n]) with class_logits = id_logits @ matrix.T."""
    unique = sorted({i for per_class in ids for word in per_class for i in word})
    pos = {t: j for j, t in enumerate(unique)}
    mat = torch.zeros(len(ids), len(unique))
    for c, per_class in enumerate(ids):
        for word in per_class:
            for t in word:
                mat[c, pos[t]] += 1.0 / (len(word) * len(per_class))
    return torch.tensor(unique, dtype=torch.long), mat


def _mlm_transform(model) -> Callable:
    """The MLM head up to (not including) its vocab projection, per architecture."""
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):  # BERT-style
        return model.cls.predictions.transform
    if hasattr(model, "lm_head") and hasattr(model.lm_head, "layer_norm"):  # RoBERTa / XLM-R / CamemBERT
        from transformers.activations import gelu
        head = model.lm_head
        return lambda h: head.layer_norm(gelu(head.dense(h)))
    if hasattr(model, "generator_predictions"):  # ELECTRA generator
        return model.generator_predictions
    raise UserError(f"masked-LM head of {type(model).__name__} is not supported: use --family encoder "
                    f"(similarity head) or a BERT/RoBERTa/ELECTRA model")


def head_transform(model, family: Family) -> Callable:
    """h [B, d] at the scoring position -> features fed to the vocab projection."""
    if family is Family.MLM:
        return _mlm_transform(model)
    if family is Family.SEQ2SEQ and getattr(model.config, "scale_decoder_outputs", False):
        scale = model.config.d_model ** -0.5
        return lambda h: h * scale
    return lambda h: h


def _output_bias(model) -> torch.Tensor | None:
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None)
    if bias is None and hasattr(model, "lm_head") and isinstance(getattr(model.lm_head, "bias", None), nn.Parameter):
        bias = model.lm_head.bias
    return bias


class LabelWordHead(nn.Module):
    """[B, d] transformed hidden states -> [B, classes] via the label-word rows of the output matrix."""

    def __init__(self, rows: torch.Tensor, bias: torch.Tensor, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("word_weight", rows.float().clone())   # [n_ids, d]
        self.register_buffer("word_bias", bias.float().clone())     # [n_ids]
        self.register_buffer("class_matrix", matrix.float())        # [classes, n_ids]

    @classmethod
    def from_model(cls, model, tokenizer, label_words) -> "LabelWordHead":
        ids, matrix = class_matrix(label_word_ids(tokenizer, label_words))
        out = model.get_output_embeddings()
        bias = _output_bias(model)
        params = [out.weight] + ([bias] if bias is not None else [])
        with gathered(params):
            rows = out.weight[ids].detach()
            b = bias[ids].detach() if bias is not None else torch.zeros(len(ids))
        return cls(rows, b, matrix)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        word_logits = h.float() @ self.word_weight.T + self.word_bias
        return word_logits @ self.class_matrix.T


class SimilarityHead(nn.Module):
    """Cosine between the pooled prompted input and pooled label descriptions, divided by a temperature."""

    def __init__(self, label_embeddings: torch.Tensor, temperature: float = 0.05):
        super().__init__()
        self.register_buffer("label_embeddings", F.normalize(label_embeddings.float(), dim=-1))  # [classes, d]
        self.temperature = temperature

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled.float(), dim=-1) @ self.label_embeddings.T / self.temperature


class LinearHead(nn.Module):
    """A trainable linear classifier on the pooled output (fp32)."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(d_model, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled.float())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d], [B, T] -> [B, d] mean over attended positions."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


# prompt.json records the head class; this maps it back to the --head choice that rebuilds it.
HEAD_KINDS = {"LabelWordHead": "label_words", "SimilarityHead": "similarity", "LinearHead": "linear"}
