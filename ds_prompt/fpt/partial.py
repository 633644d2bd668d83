"""Partial PLMs for Fast Prompt Tuning: fewer layers (depth), fewer FFN neurons (width), or both.

A partial model is built IN PLACE from the loaded frozen full model, sharing its weights:
- depth (layer dropping): every layer stack (T5: encoder and decoder) is replaced by a ModuleList of the
  kept layer modules themselves (`evenly_select_layers`: first and last always kept, so T5's relative
  attention bias, which lives in block 0, is kept). Dropped layers are freed; nothing is copied. Kept layers
  get `layer_idx` renumbered (KV caches index by it) and the configs' layer counts / `layer_types` follow.
- width (FFN reduction, MoEfication-style): each FFN keeps its top-k neurons by score, k = round(width *
  d_ff); the input projections' rows (Conv1D: columns) and the output projection's columns are sliced, so
  only the kept k/d_ff of each FFN weight is copied and the full FFN weight is freed. Selections are nested:
  every width takes the top-k of the SAME score vector (stable sort, so ties cannot break nesting).

ZeRO-3: `ds_prompt.recipes.prompt_tuning.train(model_transform=...)` calls the transform on the freshly loaded,
unpartitioned backbone, BEFORE deepspeed.initialize, so DeepSpeed partitions the (smaller) partial model.
If parameters are already partitioned (they carry `ds_id`, e.g. a model built under deepspeed.zero.Init),
`slice_ffn` gathers each FFN's weights with `ds_prompt.dist.gathered` (collective: all ranks apply the same
spec), slices them into new plain parameters, and the next deepspeed.initialize partitions those (DeepSpeed
converts every parameter without `ds_id`). Depth reduction only regroups modules, so it needs no gather.
Neuron scoring runs forwards before the engine exists, so on a partitioned backbone `neuron_scores` gathers
one layer at a time (`ds_prompt.models.ffn.gathered_layerwise`) and never holds the whole model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ds_prompt.errors import UserError
from ds_prompt.models.ffn import ffn_layers, gathered_layerwise, layer_stacks, record_ffn_activations, slice_ffn
from ds_prompt.models.shortcuts import full_forward


def evenly_select_layers(num_layers: int, keep: int) -> list[int]:
    """Indices of `keep` of `num_layers` layers, evenly spread, always including the first and the last.

    The L-1 gaps between kept layers are q = (L-1) // (n-1) or q+1, the shorter gaps first; for L=24 this
    gives the FPT paper's n=6 -> [0,4,8,13,18,23], n=12 -> [0,2,...,20,23], n=18 -> [0..11,13,15,...,23].
    keep == num_layers -> all layers; keep == 1 -> [0] (the first layer: it holds T5's relative position bias).
    """
    for name, value in (("num_layers", num_layers), ("keep", keep)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {value!r}")
    if num_layers < 1:
        raise UserError(f"num_layers must be >= 1, got {num_layers}")
    if not 1 <= keep <= num_layers:
        raise UserError(f"cannot keep {keep} of {num_layers} layers: keep must be in [1, {num_layers}]")
    if keep == 1:
        return [0]
    gaps = keep - 1
    q, r = divmod(num_layers - 1, gaps)
    short = gaps - r  # the first `short` gaps are q, the remaining r gaps are q + 1
    return [i * q + max(0, i - short) for i in range(keep)]


def _is_fraction(value) -> bool:
    return isinstance(value, float) and 0.0 < value <= 1.0


@dataclass(frozen=True)
class PartialModelSpec:
    """Which part of the model a stage trains through.

    depth: an int = layers kept per stack, or a float in (0, 1] = fraction of each stack's layers
           (rounded, at least 1); 1.0 keeps all.
    width: a float in (0, 1] = fraction of each FFN's d_ff neurons kept (rounded, at least 1); 1.0 keeps all.
    """
    depth: int | float = 1.0
    width: float = 1.0

    def __post_init__(self):
        d, w = self.depth, self.width
        if isinstance(d, bool) or not (_is_fraction(d) or (isinstance(d, int) and d >= 1)):
            raise UserError(f"depth {d!r} must be a number of layers (int >= 1) or a fraction in (0, 1]")
        if isinstance(w, int) and not isinstance(w, bool) and w == 1:
            object.__setattr__(self, "width", 1.0)
        elif not _is_fraction(w):
            raise UserError(f"width {w!r} must be a fraction of the FFN neurons in (0, 1]")

    @property
    def keeps_all_neurons(self) -> bool:
        return self.width == 1.0

    def layers_for(self, num_layers: int) -> int:
        """Layers kept of a `num_layers` stack; UserError if an int depth exceeds it."""
        if isinstance(self.depth, float):
            return max(1, min(num_layers, round(self.depth * num_layers)))
        if self.depth > num_layers:
            raise UserError(f"depth {self.depth} exceeds the model's {num_layers} layers: use at most "
                            f"{num_layers} or a fraction such as 0.5")
        return self.depth

    def neurons_for(self, d_ff: int) -> int:
        return max(1, min(d_ff, round(self.width * d_ff)))

    def to_dict(self) -> dict:
        return {"depth": self.depth, "width": self.width}


def top_neurons(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of the k highest `scores` [d_ff]. Nested: top_neurons(s, k1) is a subset of
    top_neurons(s, k2) for k1 <= k2 (a stable sort breaks ties by index)."""
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


def prompted_token_mask(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """[B, prompt_length + T] mask of a prompted input (the prompt positions are always real)."""
    ones = attention_mask.new_ones(attention_mask.shape[0], prompt_length)
    return torch.cat([ones, attention_mask], dim=1)


@torch.no_grad()
def neuron_scores(model, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per-neuron mean |activation| of every FFN of `model.backbone` over the real tokens of `batches`.

    `model` is a PromptedModel (its current prompt is prepended); `batches` are `collate`d dicts. Padding is
    excluded with the prompted attention mask; T5's decoder runs one step, all of whose rows are real.
    A ZeRO-3 partitioned backbone is gathered layer by layer (`gathered_layerwise`; collective: every rank
    must score the same number of batches). Returns {ffn name: [d_ff] float32 (CPU)}, names as in
    `ffn_layers(model.backbone)` of the full model.
    """
    from ds_prompt.kernels.activation_stats import activation_stats
    refs = ffn_layers(model.backbone)
    device = next(model.prompt.parameters()).device
    sums = {r.name: torch.zeros(r.d_ff, dtype=torch.float64) for r in refs}
    tokens = {r.name: 0 for r in refs}
    model.eval()
    with gathered_layerwise(model.backbone), record_ffn_activations(model.backbone, refs) as acts, \
            full_forward(model):  # every position of every layer is scored
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
            mask = prompted_token_mask(batch["attention_mask"], model.prompt.length)
            for ref in refs:
                x = acts[ref.name]
                rows = mask.reshape(-1).bool() if x.shape[:2] == mask.shape else None
                _, abs_mean = activation_stats(x.reshape(-1, x.shape[-1]), rows)
                kept = x.shape[0] * x.shape[1] if rows is None else int(rows.sum())
                sums[ref.name] += abs_mean.double().cpu() * kept
                tokens[ref.name] += kept
    return {name: (sums[name] / max(tokens[name], 1)).float() for name in sums}


def _renumber_layer_idx(layer: nn.Module, index: int) -> None:
    # Attention modules address KV caches by layer_idx; a partial stack must count 0..n-1.
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def _update_configs(model: nn.Module, stack, kept: list[int], original: int) -> None:
    """Layer counts (and per-layer `layer_types`) in the model config and the stack's own config (T5)."""
    n = len(kept)
    configs = [model.config]
    owner_cfg = getattr(stack.owner, "config", None)
    if owner_cfg is not None and owner_cfg is not model.config:
        owner_cfg.num_hidden_layers = n
        configs.append(owner_cfg)
    if getattr(model.config, "is_encoder_decoder", False):
        setattr(model.config, "num_layers" if stack.role == "encoder" else "num_decoder_layers", n)
    else:
        model.config.num_hidden_layers = n
    for cfg in configs:
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) == original:
            cfg.layer_types = [types[i] for i in kept]


def select_layers(model: nn.Module, spec: PartialModelSpec) -> dict[str, list[int]]:
    """Keep `spec.depth` layers of every stack of `model`, in place. Returns {stack path: kept indices}."""
    kept_by_stack = {}
    for stack in layer_stacks(model):
        layers = list(stack.layers)
        kept = evenly_select_layers(len(layers), spec.layers_for(len(layers)))
        kept_by_stack[stack.path] = kept
        if len(kept) == len(layers):
            continue
        stack.replace([layers[i] for i in kept])
        for position, layer in enumerate(stack.layers):
            _renumber_layer_idx(layer, position)
        _update_configs(model, stack, kept, len(layers))
    return kept_by_stack


def reduce_width(model: nn.Module, spec: PartialModelSpec, scores: dict[str, torch.Tensor],
                 kept_layers: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Slice every FFN of `model` to its top `spec.width` neurons by `scores`, in place.

    `scores` are keyed by the FULL model's FFN names; `kept_layers` ({stack: original indices}, from
    `select_layers`) maps positions of an already depth-reduced model back to them. Returns {name: k}.
    """
    if getattr(model.config, "quantization_config", None) is not None:  # bitsandbytes: packed weights
        raise UserError("FFN reduction (width < 1) cannot slice quantized weights: use --quantization none, "
                        "or a depth-only plan (layer dropping works on quantized models)")
    kept_neurons = {}
    for ref in ffn_layers(model):
        original = kept_layers[ref.stack][ref.index] if kept_layers else ref.index
        key = f"{ref.stack}.{original}"
        if key not in scores or scores[key].numel() != ref.d_ff:
            raise UserError(f"neuron scores have no entry of size {ref.d_ff} for FFN {key}: they were computed "
                            f"for another model; delete the scores file to recompute them")
        k = spec.neurons_for(ref.d_ff)
        if k < ref.d_ff:
            slice_ffn(ref, top_neurons(scores[key], k))
        kept_neurons[ref.name] = k
    return kept_neurons


@dataclass(frozen=True)
class PartialModelInfo:
    """What `apply_partial` kept: {stack path: original layer indices}, {ffn name (partial model): k}."""
    layers: dict[str, list[int]]
    neurons: dict[str, int]

    def to_dict(self) -> dict:
        return {"layers": self.layers, "neurons": self.neurons}


def apply_partial(model: nn.Module, spec: PartialModelSpec,
                  scores: dict[str, torch.Tensor] | None = None) -> PartialModelInfo:
    """Turn the frozen full HF `model` into the partial model `spec`, in place (depth first, then width).

    `scores` ({full-model ffn name: [d_ff]}, from `neuron_scores`) are required when spec.width < 1.
    A spec keeping everything leaves the model untouched.
    """
    if not spec.keeps_all_neurons and scores is None:
        raise UserError(f"width {spec.width} needs neuron scores: compute them with neuron_scores()")
    layers = select_layers(model, spec)
    if spec.keeps_all_neurons:
        neurons = {ref.name: ref.d_ff for ref in ffn_layers(model)}
    else:
        neurons = reduce_width(model, spec, scores, layers)
    return PartialModelInfo(layers, neurons)
