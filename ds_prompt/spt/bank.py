"""SPT's memory bank: memory prompts retrieved by discrete prompts, prepended with the task's soft prompt.

Our reading of Bari et al. 2022 (the paper's details are not public; see docs/spt.md and REFERENCE.md §3):

    query  q = proj(pool(E[instruction tokens] (+ E[input tokens])))     [B, d]   E = frozen input embeddings
    top-k  idx = topk(sim(q, keys), k)                                    [B, k]   inner product or cosine
    weight w = softmax(sim(q, keys[idx]) / temperature)                   [B, k]   recomputed with autograd
    memory = sum_j w_j values[idx_j]              (weighted)              [B, l, d]
           | concat_j k w_j values[idx_j]         (concat)                [B, k*l, d]
    prompt = [task prompt ; memory]                                       [B, L_task + L_mem, d]

Every open choice is a `BankConfig` field. Keys [N, d] and values [N, l, d] are parameters of the
`MemoryBank` submodule, so ZeRO-3 partitions them when large and gathers them when the bank's forward runs.
Retrieval is per example, so one batch may mix tasks and discrete prompts.

Artifacts: `bank.safetensors` (the prompt module's tensors: bank.keys, bank.values, task_prompts.weight,
query.projection.*, plus head.* for trained linear heads) and `bank.json` (the BankConfig fields, backbone,
tasks, instructions, ...). Task ids: the run's seen (training) tasks are 0..num_tasks-1; any larger id is an
unseen task (held-out, zero-shot).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ds_prompt.builders import pooled_text_embeddings
from ds_prompt.config import InitSpec
from ds_prompt.dist import gathered
from ds_prompt.errors import require
from ds_prompt.kernels.topk_retrieval import topk_retrieval
from ds_prompt.models.family import Family
from ds_prompt.models.heads import LabelWordHead, head_transform
from ds_prompt.models.prompted import PromptedModel, build_head
from ds_prompt.models.soft_prompt import init_prompt_tensor

# The configuration and the artifact files live in bank_config.py and bank_io.py (re-exported here).
from ds_prompt.spt.bank_config import (  # noqa: F401
    MAX_INSTRUCTION_TOKENS,
    BankConfig,
    Combine,
    KeyInit,
    Pooling,
    QueryProjection,
    QuerySource,
    Similarity,
    TaskPromptKind,
    UnseenPrompt,
    parse_choice,
)
from ds_prompt.spt.bank_io import BANK_FILE, BANK_META, FORMAT, load_bank, save_bank  # noqa: F401

# ------------------------------------------------------------------------------------------------ modules

class QueryEncoder(nn.Module):
    """Token ids -> query [B, d] fp32: pooled FROZEN input embeddings, then an optional trainable projection.

    The embedding is the backbone's own (not registered here, so it is not a second copy); ZeRO-3 gathers it
    when it is called. The pooled embeddings are detached: with --train_backbone the query still carries no
    gradient into the embedding matrix.
    """

    def __init__(self, embedding: nn.Embedding, pooling: Pooling, projection: QueryProjection):
        super().__init__()
        self.__dict__["embedding"] = embedding
        self.pooling = pooling
        d = embedding.embedding_dim
        self.projection = None
        if projection is QueryProjection.MLP:  # ATTEMPT: down-projection, SiLU, up-projection, LayerNorm
            self.projection = nn.Sequential(nn.Linear(d, max(d // 4, 1)), nn.SiLU(), nn.Linear(max(d // 4, 1), d),
                                            nn.LayerNorm(d))

    def pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids, [B, T] mask -> [B, d] mean or max of the frozen embeddings over attended tokens."""
        emb = self.embedding(ids).detach().float()
        m = mask.unsqueeze(-1).bool()
        if self.pooling is Pooling.MAX:
            return emb.masked_fill(~m, float("-inf")).amax(1)
        m = m.float()
        return (emb * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(ids, mask)
        if self.projection is None:
            return pooled
        # A bf16 DeepSpeed engine holds the projection in bf16; the query stays fp32 for retrieval.
        return self.projection(pooled.to(self.projection[0].weight.dtype)).float()


class MemoryBank(nn.Module):
    """Keys [N, d] and memory prompts (values) [N, l, d], fp32 masters; query [B, d] -> memory prompt.

    Top-k uses the non-differentiable retrieval kernel; the scores of the retrieved keys are then recomputed
    with autograd, so keys (weighted and concat), values and the query projection all receive gradient.
    """

    def __init__(self, cfg: BankConfig):
        super().__init__()
        self.cfg = cfg
        self.keys = nn.Parameter(torch.zeros(cfg.size, cfg.d_model))
        self.values = nn.Parameter(torch.zeros(cfg.size, cfg.memory_length, cfg.d_model))

    def retrieve(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, d] -> (weights [B, k] fp32 summing to 1, indices [B, k] int64), best first."""
        q, keys = query.float(), self.keys.float()
        if self.cfg.similarity is Similarity.COSINE:
            q, keys = F.normalize(q, dim=-1), F.normalize(keys, dim=-1)
        _, indices = topk_retrieval(q.detach(), keys.detach(), self.cfg.top_k)
        scores = (keys[indices] * q.unsqueeze(1)).sum(-1)
        return torch.softmax(scores / self.cfg.effective_temperature, dim=-1), indices

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query [B, d] -> (memory [B, memory_tokens, d] fp32, weights [B, k], indices [B, k])."""
        weights, indices = self.retrieve(query)
        picked = self.values[indices].float()                        # [B, k, l, d]
        if self.cfg.combine is Combine.WEIGHTED:
            memory = (weights[..., None, None] * picked).sum(1)
        else:  # k * w_j keeps uniform weights at scale 1 while keys still get gradient
            memory = (self.cfg.top_k * weights[..., None, None] * picked).flatten(1, 2)
        return memory, weights, indices


class TaskPrompts(nn.Module):
    """Soft prompts per seen task ([T, L, d]) or one shared by all tasks ([1, L, d]), fp32.

    An unseen task (id >= T) gets the mean of the seen tasks' prompts (unseen_prompt=mean); with
    unseen_prompt=memory_only it gets none, see `SPTPrompt`.
    """

    def __init__(self, rows: int, length: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, length, d_model))

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        """task_ids [B] -> [B, L, d] fp32."""
        if self.weight.shape[0] == 1:
            return self.weight.float().expand(task_ids.shape[0], -1, -1)
        table = torch.cat([self.weight.float(), self.weight.float().mean(0, keepdim=True)])
        return table[task_ids.clamp(max=self.weight.shape[0])]


class SPTPrompt(nn.Module):
    """The prompt module PromptedModel calls: per-example [task prompt ; retrieved memory] -> [B, L, d]."""

    def __init__(self, cfg: BankConfig, embedding: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.query = QueryEncoder(embedding, cfg.pooling, cfg.query_projection)
        self.bank = MemoryBank(cfg)
        rows = cfg.num_tasks if cfg.task_prompt is TaskPromptKind.PER_TASK else 1
        self.task_prompts = (None if cfg.task_prompt is TaskPromptKind.NONE
                             else TaskPrompts(rows, cfg.task_prompt_length, cfg.d_model))

    def query_vectors(self, instruction_ids, instruction_mask, query_input_ids=None, query_input_mask=None):
        """[B, d] queries from each row's discrete prompt (and, with query_source=instruction+input, its input)."""
        if self.cfg.query_source is QuerySource.INSTRUCTION_INPUT:
            instruction_ids = torch.cat([instruction_ids, query_input_ids], dim=1)
            instruction_mask = torch.cat([instruction_mask, query_input_mask], dim=1)
        return self.query(instruction_ids, instruction_mask)

    def retrieve(self, **query_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [B, k], slot indices [B, k]) each row retrieves (for inspection)."""
        return self.bank.retrieve(self.query_vectors(**query_inputs))

    def forward(self, batch_size: int, dtype: torch.dtype, task_ids: torch.Tensor, **query_inputs) -> torch.Tensor:
        """[B, L, d] in `dtype`: the row's task prompt (if any) followed by its retrieved memory prompt."""
        memory, _, _ = self.bank(self.query_vectors(**query_inputs))
        parts = [memory]
        if self.task_prompts is not None and not self._memory_only(task_ids):
            parts.insert(0, self.task_prompts(task_ids))
        return torch.cat(parts, dim=1).to(dtype)

    def _memory_only(self, task_ids: torch.Tensor) -> bool:
        if self.cfg.task_prompt is not TaskPromptKind.PER_TASK or self.cfg.unseen_prompt is UnseenPrompt.MEAN:
            return False
        unseen = task_ids >= self.cfg.num_tasks
        if bool(unseen.any()) and not bool(unseen.all()):
            raise ValueError("unseen_prompt=memory_only gives unseen tasks a shorter prompt: a batch may not mix "
                             "seen and unseen tasks")
        return bool(unseen.all())


class MultiTaskHead(nn.Module):
    """Per-task class heads on one representation: h [B, d], task_ids [B] -> logits [B, max classes] fp32.

    Row b is scored by the head of task task_ids[b]; columns past that task's class count are -inf (never
    predicted, no loss). Every head runs on the whole batch (cheap: [B, d] x [d, classes]) so every rank
    calls the same modules, as ZeRO-3's collective gathers require.
    """

    def __init__(self, heads: list[nn.Module], num_classes: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_classes = list(num_classes)

    def forward(self, h: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        width = max(self.num_classes)
        out = torch.full((h.shape[0], width), float("-inf"), device=h.device)
        for t, head in enumerate(self.heads):
            logits = F.pad(head(h).float(), (0, width - self.num_classes[t]), value=float("-inf"))
            out = torch.where((task_ids == t).unsqueeze(1), logits, out)
        return out


class SPTModel(PromptedModel):
    """PromptedModel with an `SPTPrompt` and a `MultiTaskHead`: each row carries its task and discrete prompt."""

    def __init__(self, backbone: nn.Module, family: Family, prompt: SPTPrompt, head: MultiTaskHead):
        super().__init__(backbone, family, prompt, head)
        label_words = any(isinstance(h, LabelWordHead) for h in head.heads)
        self._transform = head_transform(backbone, family) if label_words else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor,
                task_ids: torch.Tensor, instruction_ids: torch.Tensor, instruction_mask: torch.Tensor) -> torch.Tensor:
        """Class logits [B, max classes] fp32 (-inf past each row's task's classes)."""
        h = self.representation(input_ids, attention_mask, score_index, task_ids=task_ids,
                                instruction_ids=instruction_ids, instruction_mask=instruction_mask,
                                query_input_ids=input_ids, query_input_mask=attention_mask)
        if self._transform is not None:
            h = self._transform(h)
        return self.head(h, task_ids)


# ------------------------------------------------------------------------------------------------ building

def build_spt_model(backbone, cfg: BankConfig, tasks: list, head: str = "auto") -> SPTModel:
    """An SPTModel over `backbone` (a ds_prompt Backbone) for `tasks` (TaskSpecs in task-id order: the
    cfg.num_tasks seen tasks first). Parameters start at zero: see `init_spt_prompt` / `load_state`."""
    require(backbone.d_model == cfg.d_model,
            f"the bank has d={cfg.d_model} but model {backbone.name} has d={backbone.d_model}: use the bank's "
            f"backbone or train a new bank")
    encode = pooled_text_embeddings(backbone)
    heads = [build_head(head, backbone.model, backbone.tokenizer, backbone.family, t, encode) for t in tasks]
    prompt = SPTPrompt(cfg, backbone.model.get_input_embeddings())
    return SPTModel(backbone.model, backbone.family, prompt, MultiTaskHead(heads, [t.num_labels for t in tasks]))


def tokenize_instructions(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each discrete prompt (no special tokens, at most MAX_INSTRUCTION_TOKENS)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_INSTRUCTION_TOKENS]
        require(ids, f"instruction {text!r} has no tokens in this tokenizer: rewrite it")
        out.append(ids)
    return out


def pad_ids(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ([n, T] ids, [n, T] mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def init_spt_prompt(prompt: SPTPrompt, init: str, key_init: str, tokenizer, instructions: list[str],
                    seed: int) -> None:
    """Initial values and task prompts from the `init` spec (normal[:std] | uniform | vocab | text:WORDS);
    keys from `key_init`: `instructions` = the queries of the seen tasks' discrete prompts, cycled over the
    N slots, plus 10% Gaussian noise (so slots starting from the same prompt diverge); `normal` = Gaussian.
    Cosine keys are rescaled to unit RMS per coordinate; dot keys keep the query scale (normal: std 0.02)."""
    cfg, emb = prompt.cfg, prompt.query.embedding
    require(InitSpec.parse(init).kind in ("normal", "uniform", "vocab", "text"),
            f"--init '{init}' is not supported by SPT: use normal[:std], uniform, vocab or text:WORDS "
            f"(start from a trained bank with --init_bank)")
    values = init_prompt_tensor(init, cfg.size * cfg.memory_length, emb, tokenizer, seed)
    prompt.bank.values.copy_(values.view(cfg.size, cfg.memory_length, cfg.d_model))
    if prompt.task_prompts is not None:
        rows, length, _ = prompt.task_prompts.weight.shape
        table = init_prompt_tensor(init, rows * length, emb, tokenizer, seed + 1)
        prompt.task_prompts.weight.copy_(table.view(rows, length, cfg.d_model))
    prompt.bank.keys.copy_(_initial_keys(prompt, key_init, tokenizer, instructions, seed + 2))


def _initial_keys(prompt: SPTPrompt, key_init: str, tokenizer, instructions: list[str], seed: int) -> torch.Tensor:
    cfg = prompt.cfg
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(cfg.size, cfg.d_model, generator=gen)
    if parse_choice(KeyInit, key_init, "key_init") is KeyInit.NORMAL:
        keys = noise * (0.02 if cfg.similarity is Similarity.DOT else 1.0)
    else:
        ids, mask = pad_ids(tokenize_instructions(tokenizer, instructions), tokenizer.pad_token_id or 0)
        weight = prompt.query.embedding.weight
        with gathered(weight):  # a ZeRO-3 (sharded) load leaves the embedding partitioned: shape 0 here
            queries = prompt.query(ids.to(weight.device), mask.to(weight.device)).float().cpu()
        keys = queries[torch.arange(cfg.size) % len(instructions)]
        keys = keys + 0.1 * _rms(keys) * noise
    # Cosine ignores a key's scale, so keys are stored at unit RMS: an Adam step of --lr per coordinate then
    # moves a key by a few percent instead of swamping the tiny scale of pooled embeddings.
    return keys / _rms(keys) if cfg.similarity is Similarity.COSINE else keys


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-12)


def prompt_tensors(prompt: SPTPrompt) -> dict[str, torch.Tensor]:
    """The prompt module's parameters by bank.safetensors name (its own parameter names)."""
    return {n: p.detach().float().cpu().clone() for n, p in prompt.named_parameters()}


def load_state(prompt: SPTPrompt, tensors: dict[str, torch.Tensor], source: str, strict: bool = True) -> list[str]:
    """Copy `tensors` (bank.safetensors names) into `prompt`; returns the names copied.

    strict: every tensor of the prompt must be present with its shape. Otherwise only matching names are
    copied (a bank used to initialize a run with other tasks)."""
    params = dict(prompt.named_parameters())
    copied = []
    for name, p in params.items():
        value = tensors.get(name)
        if value is None or value.shape != p.shape:
            require(not strict, f"bank {source} lacks {name} {tuple(p.shape)} (has "
                                f"{tuple(value.shape) if value is not None else 'nothing'}): it was saved with "
                                f"other options; re-train it or pass matching options")
            continue
        with torch.no_grad():
            p.copy_(value.to(p.dtype))
        copied.append(name)
    return copied
