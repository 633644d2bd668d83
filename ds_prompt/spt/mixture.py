"""Multitask prompted training data: a task suite, mixing rates, and world-size-independent global batches.

A `Sample` is (task, example, discrete prompt): every draw picks a task by the mixing rates, an example of
that task, and one of the task's discrete prompts (`TaskSpec.instructions`) uniformly; the prompt is what
retrieves memory prompts. Global batches are a pure function of (seed, step), so a run resumes exactly and
gives the same update at any world size; `micro_batches` splits a global batch into this rank's share.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from ds_prompt.data.encoding import Encoded, TemplateEncoder, collate
from ds_prompt.errors import UserError, require
from ds_prompt.spt.bank import pad_ids, parse_choice, tokenize_instructions


class Mixing(str, Enum):
    PROPORTIONAL = "proportional"   # rate ~ min(n, cap)              (T5 "examples-proportional")
    TEMPERATURE = "temperature"     # rate ~ min(n, cap) ** (1 / T)    (T5 / mT5 temperature sampling)


def mixing_rates(sizes: list[int], mixing: str = "temperature", temperature: float = 2.0, cap: int = 0) -> list[float]:
    """Probability of drawing each task. `cap` > 0 limits a task's effective size (T5's K)."""
    kind = parse_choice(Mixing, mixing, "mixing")
    require(all(n > 0 for n in sizes), f"every training task needs examples, got sizes {sizes}")
    require(temperature > 0, f"--mixing_temperature {temperature} must be > 0 (1 = proportional)")
    require(cap >= 0, f"--mixing_cap {cap} must be >= 0 (0 = no cap)")
    n = np.array([min(s, cap) if cap else s for s in sizes], dtype=np.float64)
    weights = n if kind is Mixing.PROPORTIONAL else n ** (1.0 / temperature)
    return (weights / weights.sum()).tolist()


@dataclass(frozen=True, order=True)
class Sample:
    task: int          # task id (index into the suite)
    index: int         # example index within the task's training split
    instruction: int   # which of the task's discrete prompts


class MixturePlan:
    """Global batches of `Sample`s drawn from a task mixture, identical for every world size.

    Step s draws its tasks and prompts from a generator seeded by (seed, s). Within a task, examples come
    without replacement in a seeded order that is reshuffled each time the task is used up, so every example
    is seen before any repeats. The plan keeps per-task draw counts for the next step; asking for an earlier
    (or later) step recomputes them from step 0 (cheap: integers only).
    """

    def __init__(self, sizes: list[int], num_instructions: list[int], rates: list[float], global_batch: int,
                 seed: int):
        require(len(sizes) == len(num_instructions) == len(rates), "one size, prompt count and rate per task")
        self.sizes, self.num_instructions, self.rates = list(sizes), list(num_instructions), np.array(rates)
        self.global_batch, self.seed = global_batch, seed
        self._next_step, self._counts = 0, [0] * len(sizes)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        tasks = rng.choice(len(self.sizes), size=self.global_batch, p=self.rates)
        instructions = np.floor(rng.random(self.global_batch) * np.array(self.num_instructions)[tasks])
        return tasks, instructions.astype(np.int64)

    def _example(self, task: int, count: int) -> int:
        epoch, position = divmod(count, self.sizes[task])
        cached = self._orders.get(task)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, task, epoch, 1]).permutation(self.sizes[task])
            self._orders[task] = cached = (epoch, order)
        return int(cached[1][position])

    def global_batch_at(self, step: int) -> list[Sample]:
        """The `global_batch` samples of optimizer step `step` (0-based)."""
        if step != self._next_step:
            self._next_step, self._counts = 0, [0] * len(self.sizes)
            while self._next_step < step:
                for t in self._draw(self._next_step)[0]:
                    self._counts[t] += 1
                self._next_step += 1
        tasks, instructions = self._draw(step)
        batch = []
        for t, i in zip(tasks.tolist(), instructions.tolist()):
            batch.append(Sample(t, self._example(t, self._counts[t]), i))
            self._counts[t] += 1
        self._next_step = step + 1
        return batch


def micro_batches(batch: list, world: int, rank: int, accum: int, length) -> list[list]:
    """This rank's `accum` micro-batches of a global batch: sorted by `length(sample)` (tight padding), cut
    into world x accum equal chunks, rank r taking chunks [r*accum, (r+1)*accum) (as BatchPlan does)."""
    n = world * accum
    if len(batch) % n:
        raise UserError(f"--batch_size {len(batch)} is not divisible by world_size x grad_accum = {n}")
    ordered = sorted(batch, key=length)
    size = len(batch) // n
    return [ordered[k * size:(k + 1) * size] for k in range(rank * accum, (rank + 1) * accum)]


@dataclass
class SuiteTask:
    """One task of a run: its spec, template encoder, examples and tokenized discrete prompts.

    `input_instruction_ids`: the discrete prompts as they are put into the model input (each followed by a
    newline), when the run feeds them there (T0-style); empty otherwise."""
    spec: object
    encoder: TemplateEncoder
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    instruction_ids: list[list[int]] = field(default_factory=list)
    input_instruction_ids: list[list[int]] = field(default_factory=list)

    def encode(self, example, instruction: int) -> Encoded:
        """The example's template encoding; with instructions in the input, [specials; instruction; rest]."""
        enc = self.encoder.encode(example)
        if not self.input_instruction_ids:
            return enc
        extra = self.input_instruction_ids[instruction]
        k = len(self.encoder.prefix)
        return Encoded(enc.input_ids[:k] + extra + enc.input_ids[k:], enc.score_index + len(extra), enc.label)


def input_instruction_ids(tokenizer, instructions: list[str]) -> list[list[int]]:
    """Token ids of each discrete prompt followed by a newline, as it precedes the input (T0-style)."""
    return [tokenizer(text + "\n", add_special_tokens=False)["input_ids"] for text in instructions]


class TaskSuite:
    """The tasks of one SPT run in task-id order (seen tasks first, then held-out), with lazy encoding.

    Training examples are encoded when first drawn (a large task is never encoded whole); evaluation
    splits once per discrete prompt, on first use. With `instruction_in_input`, each row's discrete prompt
    (the one its retrieval query is built from) also precedes its text in the model input, and the template
    encoders reserve room for the longest one within `max_length`.
    """

    def __init__(self, tasks: list[SuiteTask], pad_id: int, left_pad: bool):
        self.tasks, self.pad_id, self.left_pad = tasks, pad_id, left_pad
        self._train_cache: dict[tuple[int, int, int], Encoded] = {}
        self._eval_cache: dict[tuple[int, int], list[Encoded]] = {}

    @classmethod
    def build(cls, specs: list, tokenizer, family, max_length: int, prompt_length: int,
              train: list[list], evals: list[list], left_pad: bool,
              instruction_in_input: bool = False) -> "TaskSuite":
        tasks = []
        for spec, tr, ev in zip(specs, train, evals):
            in_input = input_instruction_ids(tokenizer, list(spec.instructions)) if instruction_in_input else []
            reserve = max((len(ids) for ids in in_input), default=0)
            encoder = TemplateEncoder(spec, tokenizer, family, max_length - reserve, prompt_length)
            tasks.append(SuiteTask(spec, encoder, tr, ev, tokenize_instructions(tokenizer, list(spec.instructions)),
                                   in_input))
        return cls(tasks, tokenizer.pad_token_id, left_pad)

    @property
    def instruction_in_input(self) -> bool:
        return any(t.input_instruction_ids for t in self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.spec.name for t in self.tasks]

    def encoded(self, sample: Sample) -> Encoded:
        key = (sample.task, sample.index, sample.instruction if self.instruction_in_input else 0)
        if key not in self._train_cache:
            task = self.tasks[sample.task]
            self._train_cache[key] = task.encode(task.train[sample.index], key[2])
        return self._train_cache[key]

    def length(self, sample: Sample) -> int:
        return len(self.encoded(sample).input_ids)

    def eval_encoded(self, task: int, instruction: int = 0) -> list[Encoded]:
        """The task's eval split, encoded for its discrete prompt number `instruction`."""
        key = (task, instruction if self.instruction_in_input else 0)
        if key not in self._eval_cache:
            t = self.tasks[task]
            self._eval_cache[key] = [t.encode(e, key[1]) for e in t.eval]
        return self._eval_cache[key]

    def collate(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Padded batch: input_ids, attention_mask, score_index, labels [B], task_ids [B], instruction_ids and
        instruction_mask [B, T_instruction] (right-padded)."""
        batch = collate([self.encoded(s) for s in samples], self.pad_id, self.left_pad)
        batch["task_ids"] = torch.tensor([s.task for s in samples], dtype=torch.long)
        rows = [self.tasks[s.task].instruction_ids[s.instruction] for s in samples]
        batch["instruction_ids"], batch["instruction_mask"] = pad_ids(rows, self.pad_id)
        return batch
