"""Analytic FLOPs of a prompt-tuning step through a frozen (possibly partial) model.

Only matmuls are counted (a multiply-add = 2 FLOPs); norms, activations, softmax and embedding lookups are
left out. Per example with s prompted input tokens, each layer costs, forward:
- projections: 2 * tokens * (matmul parameters applied to those tokens): q,k,v,o and the FFN
  (d_model * k * (2 if gated else 1) + k * d_model for k kept neurons);
- attention: QK^T and AV, 2 * 2 * s_q * s_k * d_attn (the full s^2, also for causal masks).
T5's decoder runs ONE step (the class is read at the first decoder position): its self-attention and FFN
see 1 token. Its cross-attention takes ds_prompt's factored one-query path (`models/t5_step.py`): the query
is moved into the key space per head (q_h Wk_h, 2 * d_attn * d_model) and the pooled encoder states out of
it (2 * d_attn * d_model), so the s encoder states are never projected; scores and pooling cost
2 * 2 * s * heads * d_model (both operands activations). Models without the head count (ledgers written
before it was recorded) keep the standard path's count (2 * s * 2 * d_model * d_kv to project keys/values).
The head (MLM transform + one row per class at one position) is counted separately and is negligible; an
embedding -> hidden projection (ELECTRA) is counted over every token, like a layer that is never dropped.
`tests/test_fpt_partial.py` checks the forward count against `torch.utils.flop_counter` for every tiny arch.

By default the ledger counts the full forward (the papers' cost model, and what FPT's fractions compare).
`step_flops(..., shortcuts=ComputeShortcuts(...))` counts what ds_prompt's exact shortcuts compute instead
(`models/shortcuts.py`): the scoring stack's last layer projects keys/values for every token but runs its
query, output projection and FFN for one (attention 1 x s); a causal shared prefix of P prompt vectors runs
every layer once per batch (P tokens, P x P attention), and each row's layers then see only its s - P input
tokens as queries (attention (s - P) x s).

Backward ("activations", the default): prompt tuning needs gradients w.r.t. activations only, because the
frozen weights get no gradient; every weight matmul Y = X W costs one more matmul dX = dY W^T (1x its
forward), and the attention matmuls, whose both operands are activations, cost 2x their forward. The
"standard" convention (weights trained too: dX and dW) counts 2x forward for every matmul, the usual
6 * params * tokens rule. A step is forward + backward over the GLOBAL batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ds_prompt.errors import UserError
from ds_prompt.fpt.partial import PartialModelSpec
from ds_prompt.models.family import Family
from ds_prompt.models.ffn import ffn_layers, layer_stacks

BACKWARD_CONVENTIONS = ("activations", "standard")


@dataclass(frozen=True)
class LengthStats:
    """Prompted input lengths of the training data: mean tokens and mean squared tokens per example."""
    mean: float
    mean_sq: float

    @classmethod
    def of(cls, lengths: list[int]) -> "LengthStats":
        if not lengths:
            raise UserError("no training examples to measure lengths on: check --task / --data_dir")
        return cls(sum(lengths) / len(lengths), sum(n * n for n in lengths) / len(lengths))

    @classmethod
    def fixed(cls, length: int) -> "LengthStats":
        return cls(float(length), float(length * length))


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that set a model's matmul FLOPs.

    d_attn: query/output width (heads * head_dim); d_kv: key/value width (kv_heads * head_dim, GQA-aware).
    layers: {stack role: layer count} ('encoder' and/or 'decoder'); head_params: matmul parameters applied
    at the scoring position by the head.
    """
    family: Family
    d_model: int
    d_attn: int
    d_kv: int
    d_ff: int
    gated: bool
    layers: dict = field(default_factory=dict)
    head_params: int = 0
    heads: int = 0
    input_proj_params: int = 0  # ELECTRA-style embedding -> hidden projection, applied to every token

    @classmethod
    def from_model(cls, model, family: Family, num_classes: int = 2) -> "ModelShape":
        """Shape of a loaded HF model (read before any partial transform for the full model's)."""
        cfg = model.config
        d = cfg.hidden_size  # not the embedding width: ELECTRA projects smaller embeddings up
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or d // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        ref = ffn_layers(model)[0]
        layers = {}
        for stack in layer_stacks(model):
            layers[stack.role] = layers.get(stack.role, 0) + len(stack.layers)
        head = (d * d if family is Family.MLM else 0) + d * num_classes
        emb = getattr(cfg, "embedding_size", None) or d
        return cls(family, d, heads * head_dim, kv_heads * head_dim, ref.d_ff, ref.gated, layers, head, heads,
                   emb * d if emb != d else 0)

    def to_dict(self) -> dict:
        return {"family": self.family.value, "d_model": self.d_model, "d_attn": self.d_attn, "d_kv": self.d_kv,
                "d_ff": self.d_ff, "gated": self.gated, "layers": dict(self.layers),
                "head_params": self.head_params, "heads": self.heads, "input_proj_params": self.input_proj_params}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelShape":
        return cls(**dict(data, family=Family(data["family"]), layers=dict(data["layers"])))

    @property
    def seq2seq(self) -> bool:
        return self.family is Family.SEQ2SEQ


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one layer for one example, split by backward cost class."""
    weights: float      # matmuls with a frozen weight operand
    attention: float    # QK^T and AV (both operands are activations)

    def step(self, backward: str) -> float:
        """Forward + backward FLOPs under a backward convention (see module doc)."""
        if backward == "activations":
            return 2 * self.weights + 3 * self.attention
        if backward == "standard":
            return 3 * (self.weights + self.attention)
        raise UserError(f"unknown backward convention '{backward}': use one of {', '.join(BACKWARD_CONVENTIONS)}")


def _ffn_params(shape: ModelShape, neurons: int) -> int:
    return shape.d_model * neurons * (2 if shape.gated else 1) + neurons * shape.d_model


def _attn_proj_params(shape: ModelShape) -> tuple[int, int]:
    """(params applied to query-side tokens: q and o, params applied to key/value-side tokens: k and v)."""
    return 2 * shape.d_model * shape.d_attn, 2 * shape.d_model * shape.d_kv


def encoder_layer_flops(shape: ModelShape, lengths: LengthStats, neurons: int) -> LayerFlops:
    """A self-attention layer over the s prompted tokens (encoders, causal decoders, T5's encoder)."""
    qo, kv = _attn_proj_params(shape)
    weights = 2 * lengths.mean * (qo + kv + _ffn_params(shape, neurons))
    attention = 2 * 2 * lengths.mean_sq * shape.d_attn
    return LayerFlops(weights, attention)


def t5_decoder_layer_flops(shape: ModelShape, lengths: LengthStats, neurons: int, steps: int = 1) -> LayerFlops:
    """A T5 decoder layer run for `steps` decoder tokens over s encoder states (the factored cross-attention
    when `steps` is 1 and the head count is known; see the module docstring)."""
    qo, kv = _attn_proj_params(shape)
    t = steps
    self_attn = 2 * t * (qo + kv)
    if t == 1 and shape.heads:
        cross = 2 * t * (qo + 2 * shape.d_attn * shape.d_model)
        cross_attention = 2 * 2 * t * lengths.mean * shape.heads * shape.d_model
    else:
        cross = 2 * t * qo + 2 * lengths.mean * kv
        cross_attention = 2 * 2 * t * lengths.mean * shape.d_attn
    weights = self_attn + cross + 2 * t * _ffn_params(shape, neurons)
    attention = 2 * 2 * t * t * shape.d_attn + cross_attention
    return LayerFlops(weights, attention)


@dataclass(frozen=True)
class ComputeShortcuts:
    """Which exact shortcuts a forward takes (see `models.shortcuts`): the scoring stack's last layer at the
    scoring position only, and a causal prompt prefix of `shared_prefix` vectors computed once per batch."""
    last_layer: bool = False
    shared_prefix: int = 0


def _self_attention_layer(shape: ModelShape, queries: float, query_key_pairs: float, kv_tokens: float,
                          neurons: int) -> LayerFlops:
    """A self-attention layer with `queries` query tokens (q, o, FFN), `kv_tokens` projected key/value tokens
    and `query_key_pairs` scores (all per example)."""
    qo, kv = _attn_proj_params(shape)
    weights = 2 * (queries * (qo + _ffn_params(shape, neurons)) + kv_tokens * kv)
    return LayerFlops(weights, 2 * 2 * query_key_pairs * shape.d_attn)


def _shortcut_layers_flops(shape: ModelShape, lengths: LengthStats, neurons: int, layers: int, batch_size: int,
                           shortcuts: ComputeShortcuts, backward: str) -> float:
    """Per-example FLOPs of `layers` layers of the scoring stack under `shortcuts`."""
    p = shortcuts.shared_prefix
    tokens, pairs = lengths.mean - p, lengths.mean_sq - p * lengths.mean   # the rows' own queries
    total = 0.0
    if p:  # the prefix runs every layer once per batch (its last layer in full)
        total += layers * _self_attention_layer(shape, p, p * p, p, neurons).step(backward) / batch_size
    full = _self_attention_layer(shape, tokens, pairs, tokens, neurons).step(backward)
    if shortcuts.last_layer and layers:
        last = _self_attention_layer(shape, 1, lengths.mean, tokens, neurons).step(backward)
        return total + (layers - 1) * full + last
    return total + layers * full


def layer_flops(shape: ModelShape, role: str, lengths: LengthStats, neurons: int) -> LayerFlops:
    if shape.seq2seq and role == "decoder":
        return t5_decoder_layer_flops(shape, lengths, neurons)
    return encoder_layer_flops(shape, lengths, neurons)


def step_flops(shape: ModelShape, lengths: LengthStats, batch_size: int, depth=1.0, width: float = 1.0,
               backward: str = "activations", layers_only: bool = False,
               shortcuts: ComputeShortcuts | None = None) -> float:
    """FLOPs of one training step (forward + backward over `batch_size` examples) through the partial
    model (depth, width) of the full model `shape` — see `PartialModelSpec` for their meaning.
    `layers_only` leaves out the head (a cost model of the transformer layers alone); `shortcuts` counts
    what the exact shortcuts compute instead of the full forward (module docstring)."""
    spec = PartialModelSpec(depth, width)
    per_example = LayerFlops(2 * lengths.mean * shape.input_proj_params, 0.0).step(backward)
    scoring_stack = None if shape.seq2seq or shape.family is Family.ENCODER else list(shape.layers)[-1]
    for role, count in shape.layers.items():
        neurons, layers = spec.neurons_for(shape.d_ff), spec.layers_for(count)
        if shortcuts is not None and role == scoring_stack:
            per_example += _shortcut_layers_flops(shape, lengths, neurons, layers, batch_size, shortcuts, backward)
        else:
            per_example += layers * layer_flops(shape, role, lengths, neurons).step(backward)
    if not layers_only:
        per_example += LayerFlops(2 * shape.head_params, 0.0).step(backward)
    return batch_size * per_example


def forward_flops(shape: ModelShape, lengths: LengthStats, layers_only: bool = False) -> float:
    """FLOPs of one plain forward of one example through the full model: every position of every layer, no
    shortcuts, no backward (what FPT's neuron scoring runs per sample). The forward third of the "standard"
    convention (3 x forward) of `step_flops`, so it counts exactly the layers `step_flops` counts."""
    return step_flops(shape, lengths, 1, backward="standard", layers_only=layers_only) / 3


def flops_fraction(stage_flops: list[tuple[int, float]], full_flops_per_step: float) -> float:
    """sum(steps_k * flops_per_step_k) / (sum(steps_k) * full flops per step): FPT vs plain PT compute."""
    total_steps = sum(steps for steps, _ in stage_flops)
    if total_steps <= 0 or full_flops_per_step <= 0:
        raise UserError("a FLOPs fraction needs at least one step and a non-empty model")
    return sum(steps * f for steps, f in stage_flops) / (total_steps * full_flops_per_step)
