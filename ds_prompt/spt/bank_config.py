"""The memory bank's configuration: every open choice of our reading of SPT (docs/spt.md) as a typed field, and
the enums of their values. Recorded in bank.json (BankConfig.from_json reads it back)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import Enum

from ds_prompt.errors import UserError, require
from ds_prompt.kernels.topk_retrieval import MAX_K

MAX_INSTRUCTION_TOKENS = 64


class Similarity(str, Enum):
    DOT = "dot"
    COSINE = "cosine"


class Combine(str, Enum):
    WEIGHTED = "weighted"
    CONCAT = "concat"


class Pooling(str, Enum):
    MEAN = "mean"
    MAX = "max"


class QuerySource(str, Enum):
    INSTRUCTION = "instruction"
    INSTRUCTION_INPUT = "instruction+input"


class QueryProjection(str, Enum):
    NONE = "none"
    MLP = "mlp"


class TaskPromptKind(str, Enum):
    PER_TASK = "per_task"
    SHARED = "shared"
    NONE = "none"


class UnseenPrompt(str, Enum):
    MEAN = "mean"
    MEMORY_ONLY = "memory_only"


class KeyInit(str, Enum):
    INSTRUCTIONS = "instructions"
    NORMAL = "normal"


def parse_choice(enum_cls: type[Enum], value, flag: str) -> Enum:
    """`--flag value` -> member of `enum_cls`; UserError listing the choices otherwise."""
    try:
        return enum_cls(value)
    except ValueError:
        choices = " or ".join(m.value for m in enum_cls)
        raise UserError(f"unknown --{flag} '{value}': use {choices}") from None


@dataclass
class BankConfig:
    """The architecture of an SPT prompt (saved flat in bank.json). N = size, l = memory_length, k = top_k."""
    d_model: int
    size: int = 16                      # N memory prompts
    memory_length: int = 10             # l tokens per memory prompt
    top_k: int = 2                      # k retrieved per example
    similarity: str = "cosine"          # cosine | dot
    combine: str = "weighted"           # weighted (sum, l tokens) | concat (k*l tokens)
    pooling: str = "mean"               # mean | max over query tokens
    temperature: float = 0.0            # softmax temperature; 0 = auto (cosine 0.1, dot sqrt(d))
    query_source: str = "instruction"   # instruction | instruction+input
    query_projection: str = "none"      # none | mlp (ATTEMPT-style bottleneck + LayerNorm, trainable)
    task_prompt: str = "per_task"       # per_task | shared | none
    task_prompt_length: int = 10
    unseen_prompt: str = "mean"         # task prompt of unseen tasks (per_task only): mean | memory_only
    num_tasks: int = 1                  # seen tasks, i.e. rows of the per-task prompt table

    def __post_init__(self) -> None:
        for name, enum_cls in _CHOICES.items():
            setattr(self, name, parse_choice(enum_cls, getattr(self, name), name))
        require(self.size >= 1, f"--bank_size {self.size} must be >= 1")
        require(self.memory_length >= 1, f"--memory_length {self.memory_length} must be >= 1")
        require(1 <= self.top_k <= min(self.size, MAX_K),
                f"--top_k {self.top_k} must be between 1 and min(--bank_size {self.size}, {MAX_K}): lower it")
        require(self.temperature >= 0, f"--temperature {self.temperature} must be >= 0 (0 = auto)")
        require(self.task_prompt is TaskPromptKind.NONE or self.task_prompt_length >= 1,
                f"--task_prompt_length {self.task_prompt_length} must be >= 1 (or pass --task_prompt none)")
        require(self.num_tasks >= 1, f"an SPT prompt needs at least one training task, got {self.num_tasks}")

    @property
    def memory_tokens(self) -> int:
        return self.memory_length * (self.top_k if self.combine is Combine.CONCAT else 1)

    @property
    def task_tokens(self) -> int:
        return 0 if self.task_prompt is TaskPromptKind.NONE else self.task_prompt_length

    @property
    def prompt_length(self) -> int:
        """Prompt tokens prepended to a seen task's input."""
        return self.task_tokens + self.memory_tokens

    @property
    def effective_temperature(self) -> float:
        if self.temperature > 0:
            return self.temperature
        return 0.1 if self.similarity is Similarity.COSINE else math.sqrt(self.d_model)

    def to_json(self) -> dict:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, meta: dict) -> "BankConfig":
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})


_CHOICES = {"similarity": Similarity, "combine": Combine, "pooling": Pooling, "query_source": QuerySource,
            "query_projection": QueryProjection, "task_prompt": TaskPromptKind, "unseen_prompt": UnseenPrompt}
