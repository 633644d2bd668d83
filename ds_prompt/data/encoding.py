"""Templates -> token ids, dynamic-padding collation, and a world-size-independent batch plan.

Template rules per family (the task template looks like "{text} It was {mask}."):
- mlm: the whole template, {mask} -> the tokenizer's mask token; the class is read at that slot.
- causal / seq2seq: the template up to {mask} (or without {mask} when text fields follow it); the class is
  read at the last token / first decoder step.
- encoder (embedding-only): the text fields alone, joined by the separator token.
Each template part is tokenized on its own (parts after the first with a leading space), so text fields can
be truncated (longest first) without re-tokenizing and without ever cutting the template or the mask.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from ds_prompt.errors import UserError
from ds_prompt.models.family import Family

_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    score_index: int      # index of the scoring token in input_ids (mlm: the mask; others: unused)
    label: int


def template_parts(template: str, text_fields, family: Family, sep_token: str | None) -> list[str]:
    """Literal strings and '{field}' / '{mask}' placeholders, in order, for `family`."""
    if family is Family.ENCODER:
        parts = []
        for i, f in enumerate(text_fields):
            if i and sep_token:
                parts.append(sep_token)
            parts.append("{" + f + "}")
        return parts
    if family in (Family.CAUSAL, Family.SEQ2SEQ):
        # Read at the end: cut the template at {mask}, unless text fields follow it (then drop only {mask}).
        head, _, tail = template.partition("{mask}")
        template = head + tail if _FIELD.search(tail) else head
    pieces = [p.strip() for p in _FIELD.split(template)]
    # re.split alternates literal, name, literal, ...
    parts = [("{" + p + "}" if i % 2 else p) for i, p in enumerate(pieces)]
    return [p for p in parts if p]


class TemplateEncoder:
    """Encodes `Example`s of a task for one tokenizer/family, within `max_length` tokens including the prompt."""

    def __init__(self, task, tokenizer, family: Family, max_length: int, prompt_length: int):
        self.task, self.tok, self.family = task, tokenizer, family
        self.parts = template_parts(task.template, task.text_fields, family, tokenizer.sep_token)
        self.prefix, self.suffix = self._specials()
        self.budget = max_length - prompt_length - len(self.prefix) - len(self.suffix)
        model_max = getattr(tokenizer, "model_max_length", None) or 10**9
        if max_length > model_max and model_max < 10**6:
            raise UserError(f"--max_length {max_length} exceeds the model's limit {model_max}: lower it")
        self._literal_ids = {p: self._tokenize(p, i) for i, p in enumerate(self.parts) if not p.startswith("{")}
        fixed = sum(len(v) for v in self._literal_ids.values()) + ("{mask}" in self.parts)
        if self.budget - fixed < len(task.text_fields):
            raise UserError(f"--max_length {max_length} leaves no room for text after a {prompt_length}-token "
                            f"prompt and the template: raise --max_length or lower --prompt_length")

    def _specials(self) -> tuple[list[int], list[int]]:
        """Special tokens the tokenizer wraps a text in (e.g. [CLS] .. [SEP], .. </s>, <s> ..)."""
        bare = self.tok("a", add_special_tokens=False)["input_ids"]
        full = self.tok("a")["input_ids"]
        k = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
        prefix, suffix = full[:k], full[k + len(bare):]
        # A causal LM reads the class at the last token, so nothing may follow the text there.
        return prefix, ([] if self.family is Family.CAUSAL else suffix)

    def _tokenize(self, text: str, position: int) -> list[int]:
        return self.tok((" " + text) if position else text, add_special_tokens=False)["input_ids"]

    def encode(self, example) -> Encoded:
        fields = dict(zip(self.task.text_fields, example.texts))
        field_ids = {f: self._tokenize(fields[f], self.parts.index("{" + f + "}")) for f in fields}
        fixed = sum(len(v) for v in self._literal_ids.values()) + ("{mask}" in self.parts)
        _truncate_longest_first(field_ids, self.budget - fixed)
        ids, score_index = list(self.prefix), -1
        for part in self.parts:
            if part == "{mask}":
                score_index = len(ids)
                ids.append(self.tok.mask_token_id)
            elif part.startswith("{"):
                ids.extend(field_ids[part[1:-1]])
            else:
                ids.extend(self._literal_ids[part])
        ids.extend(self.suffix)
        if score_index < 0:
            score_index = len(ids) - 1
        return Encoded(ids, score_index, example.label)


def _truncate_longest_first(field_ids: dict[str, list[int]], budget: int) -> None:
    while sum(len(v) for v in field_ids.values()) > budget:
        longest = max(field_ids, key=lambda f: len(field_ids[f]))
        field_ids[longest].pop()


def collate(batch: list[Encoded], pad_id: int, left_pad: bool) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest row. Left padding keeps the last token of every row at -1 (causal)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    score = torch.empty(len(batch), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        sl = slice(width - n, width) if left_pad else slice(0, n)
        ids[i, sl] = torch.tensor(e.input_ids)
        mask[i, sl] = 1
        score[i] = e.score_index + (width - n if left_pad else 0)
    labels = torch.tensor([e.label for e in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "score_index": score, "labels": labels}


class BatchPlan:
    """Global batches of example indices, identical for every world size.

    Each epoch shuffles with (seed, epoch); with `bucket`, windows of 50 global batches are sorted by length
    and the batches shuffled again, so a batch holds similar lengths (little padding). The last incomplete
    batch of an epoch is dropped. `micro_batches` splits one global batch into this rank's micro-batches.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int, bucket: bool = True):
        if len(lengths) < global_batch:
            raise UserError(f"dataset has {len(lengths)} examples, fewer than --batch_size {global_batch}: "
                            f"lower --batch_size")
        self.lengths, self.global_batch, self.seed, self.bucket = lengths, global_batch, seed, bucket

    @property
    def batches_per_epoch(self) -> int:
        return len(self.lengths) // self.global_batch

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order = order[: self.batches_per_epoch * self.global_batch]
        if self.bucket:
            window = 50 * self.global_batch
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s:s + window], key=lambda j: self.lengths[j])]
        batches = [order[s:s + self.global_batch] for s in range(0, len(order), self.global_batch)]
        if self.bucket:
            rng.shuffle(batches)
        return batches

    def micro_batches(self, batch: list[int], world: int, rank: int, accum: int) -> list[list[int]]:
        """This rank's `accum` micro-batches of one global batch (length-sorted, so each is tight)."""
        n = world * accum
        if len(batch) % n:
            raise UserError(f"--batch_size {len(batch)} is not divisible by world_size x grad_accum = {n}")
        ordered = sorted(batch, key=lambda j: self.lengths[j]) if self.bucket else batch
        size = len(batch) // n
        chunks = [ordered[k * size:(k + 1) * size] for k in range(n)]
        return chunks[rank * accum:(rank + 1) * accum]
