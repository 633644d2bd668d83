"""Where each architecture keeps its layer stacks and FFNs, and how to read or slice an FFN.

Shared by FPT (neuron scores, width reduction, depth reduction) and prompt transfer (activated-neuron
indicators). Locations, checked against transformers 5.23 (paths under `model.base_model`):

  stacks                           FFN block (under a layer)   inputs (d_model -> d_ff)   output (d_ff -> d_model)
  BERT/RoBERTa/ELECTRA/MiniLM  encoder.layer    <layer>                  intermediate.dense         output.dense
  GPT-2                        h                mlp                      c_fc (Conv1D)              c_proj (Conv1D)
  Llama/Qwen2/Mistral          layers           mlp                      gate_proj, up_proj         down_proj
  T5 (relu / gated)            encoder.block,   layer[-1].DenseReluDense wi  |  wi_0, wi_1          wo
                               decoder.block

The *activation* of an FFN is its intermediate [..., d_ff] after the nonlinearity (gated FFNs: act(gate) * up),
i.e. exactly the input of the output projection; `record_ffn_activations` reads it there with a forward
pre-hook, so one hook point serves every architecture (dropout before the output projection is inactive in the
frozen, eval-mode backbone); neuron="gate" reads the gate projection's output instead. This is the one table of
FFN locations: FPT's neuron scores and slicing and the transfer indicators' activated neurons
(transfer.activations) all read it.

Linear weights are [out, in]; GPT-2's Conv1D weights are transposed ([in, out], forward x @ W + b).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ds_prompt.dist import gathered, is_zero3_param
from ds_prompt.errors import UserError
from ds_prompt.models.wrappers import unwrapped

# (stack path under base_model, role); a model has the first group whose paths all exist.
_STACK_LAYOUTS = (
    (("encoder.block", "encoder"), ("decoder.block", "decoder")),   # T5 encoder-decoder
    (("encoder.block", "encoder"),),                                 # T5EncoderModel
    (("encoder.layer", "encoder"),),                                 # BERT, RoBERTa, ELECTRA, MiniLM
    (("h", "decoder"),),                                             # GPT-2
    (("layers", "decoder"),),                                        # Llama, Qwen2, Mistral
)

# (FFN block path under a layer, input projection names, output projection name); first match wins.
_FFN_LAYOUTS = (
    ("layer.-1.DenseReluDense", ("wi_0", "wi_1"), "wo"),    # T5 gated (v1.1, flan)
    ("layer.-1.DenseReluDense", ("wi",), "wo"),             # T5
    ("", ("intermediate.dense",), "output.dense"),          # BERT-like
    ("mlp", ("gate_proj", "up_proj"), "down_proj"),         # Llama-like (gated)
    ("mlp", ("c_fc",), "c_proj"),                           # GPT-2
)


def _get(module: nn.Module, path: str):
    """`module.a.b.-1.c` -> the submodule (integer parts index ModuleLists), or None if absent."""
    for part in path.split(".") if path else ():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and part.lstrip("-").isdigit():
            idx = int(part)
            if not -len(module) <= idx < len(module):
                return None
            module = module[idx]
        else:
            module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass(frozen=True)
class LayerStack:
    """One ModuleList of transformer layers. `path` is dotted from the model root; `role` is 'encoder'
    (bidirectional, or T5's encoder) or 'decoder' (causal stacks, T5's decoder)."""
    path: str
    role: str
    owner: nn.Module   # the module holding the list (BertEncoder, GPT2Model, LlamaModel, T5Stack)
    attr: str

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.owner, self.attr)

    def replace(self, layers: list[nn.Module]) -> None:
        """Swap in a new ModuleList (the same layer modules, not copies)."""
        setattr(self.owner, self.attr, nn.ModuleList(layers))


def _base_prefix(model: nn.Module) -> str:
    base = model.base_model
    if base is model:
        return ""
    return next(name for name, mod in model.named_children() if mod is base)


def layer_stacks(model: nn.Module) -> list[LayerStack]:
    """The layer stacks of a HF model, in forward order (T5: encoder then decoder)."""
    base, prefix = model.base_model, _base_prefix(model)
    for layout in _STACK_LAYOUTS:
        if all(isinstance(_get(base, path), nn.ModuleList) for path, _ in layout):
            stacks = []
            for path, role in layout:
                owner_path, _, attr = path.rpartition(".")
                full = ".".join(p for p in (prefix, path) if p)
                stacks.append(LayerStack(full, role, _get(base, owner_path), attr))
            return stacks
    raise UserError(f"cannot find the transformer layers of {type(model).__name__} "
                    f"(model_type '{getattr(model.config, 'model_type', '?')}'): partial models and FFN "
                    f"indicators support BERT/RoBERTa/ELECTRA/MiniLM, GPT-2, Llama/Qwen2/Mistral and T5")


def _out_features(proj: nn.Module) -> int:
    return proj.out_features if isinstance(proj, nn.Linear) else proj.nf  # attributes survive ZeRO-3


@dataclass(frozen=True)
class FFNRef:
    """One layer's FFN: `block` holds input projections (d_model -> d_ff; two for gated FFNs, [gate, up])
    and an output projection (d_ff -> d_model), named by dotted paths under `block`."""
    stack: str
    index: int                 # position of the layer in its stack
    block: nn.Module
    inputs: tuple[str, ...]
    output: str
    role: str                  # its stack's role: 'encoder' or 'decoder' (see LayerStack)

    @property
    def name(self) -> str:
        """`<stack path>.<index>`, e.g. 'bert.encoder.layer.3' or 'decoder.block.0'."""
        return f"{self.stack}.{self.index}"

    @property
    def gated(self) -> bool:
        return len(self.inputs) == 2

    def input_projections(self) -> list[nn.Module]:
        return [_get(self.block, p) for p in self.inputs]

    def output_projection(self) -> nn.Module:
        return _get(self.block, self.output)

    @property
    def d_ff(self) -> int:
        return _out_features(self.input_projections()[0])


def _ffn_layout(layer: nn.Module):
    for block_path, inputs, output in _FFN_LAYOUTS:
        block = _get(layer, block_path)
        if block is not None and all(_is_projection(_get(block, p)) for p in inputs + (output,)):
            return block, inputs, output
    raise UserError(f"cannot find the FFN of layer {type(layer).__name__}: supported FFNs are BERT-like "
                    f"intermediate/output, GPT-2 c_fc/c_proj, Llama-like gate/up/down_proj, T5 wi/wo")


def _is_projection(module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _unwrapped(layer: nn.Module) -> nn.Module:
    return unwrapped(layer)


def ffn_layers(model: nn.Module) -> list[FFNRef]:
    """Every layer's FFN, stack by stack in forward order (through activation-checkpointing wrappers)."""
    refs = []
    for stack in layer_stacks(model):
        for i, layer in enumerate(stack.layers):
            block, inputs, output = _ffn_layout(_unwrapped(layer))
            refs.append(FFNRef(stack.path, i, block, inputs, output, stack.role))
    return refs


NEURON_VALUES = ("product", "gate")


@contextlib.contextmanager
def record_ffn_activations(model: nn.Module, refs: list[FFNRef] | None = None, detach: bool = True,
                           neuron: str = "product", keep=None) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each forward stores every FFN's intermediate activation [batch, seq, d_ff] in the
    yielded dict under `ref.name` (a later forward overwrites it). Hooks are removed on exit.

    neuron="product" (default): the input of the output projection, act(x W1) or, gated, act(gate) * up;
    neuron="gate": the gate projection's output of a gated FFN (UserError for a plain FFN). `keep(ref, acts)`,
    if given, is stored instead of `acts` (e.g. one position per row, so the whole sequence is never held)."""
    if neuron not in NEURON_VALUES:
        raise UserError(f"--neuron '{neuron}' is unknown: use one of {', '.join(NEURON_VALUES)}")
    refs = ffn_layers(model) if refs is None else refs
    if neuron == "gate" and not all(ref.gated for ref in refs):
        raise UserError(f"--neuron gate needs a gated FFN, but {type(model).__name__} has none: use "
                        f"--neuron product")
    store: dict[str, torch.Tensor] = {}

    def put(ref: FFNRef, acts: torch.Tensor) -> None:
        acts = acts.detach() if detach else acts
        store[ref.name] = acts if keep is None else keep(ref, acts)
    if neuron == "product":
        handles = [ref.output_projection().register_forward_pre_hook(lambda _m, args, ref=ref: put(ref, args[0]))
                   for ref in refs]
    else:
        handles = [ref.input_projections()[0].register_forward_hook(lambda _m, _a, out, ref=ref: put(ref, out))
                   for ref in refs]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def gathered_layerwise(model: nn.Module) -> Iterator[None]:
    """Forwards through a ZeRO-3 partitioned `model` OUTSIDE a DeepSpeed engine (e.g. neuron scoring before
    deepspeed.initialize): weights outside the layer stacks are gathered for the whole block, each layer's
    own weights only while that layer runs, so at most one layer is whole at a time. A no-op for an
    unpartitioned model. Collective: every rank must run the same forwards inside the block."""
    if not any(is_zero3_param(p) for p in model.parameters()):
        yield
        return
    layers = [layer for stack in layer_stacks(model) for layer in stack.layers]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    open_gathers: dict[int, contextlib.ExitStack] = {}

    def gather(module, _args):
        open_gathers[id(module)] = stack = contextlib.ExitStack()
        stack.enter_context(gathered(list(module.parameters())))

    def release(module, _args, _output):
        open_gathers.pop(id(module)).close()
    handles = [h for layer in layers for h in (layer.register_forward_pre_hook(gather),
                                               layer.register_forward_hook(release))]
    try:
        with gathered([p for p in model.parameters() if id(p) not in in_layers]):
            yield
    finally:
        for h in handles:
            h.remove()


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def _slice_projection(proj: nn.Module, keep: torch.Tensor, side: str) -> None:
    """Keep the d_ff entries `keep` of `proj` in place: side 'out' for input projections (their outputs are
    the neurons), 'in' for the output projection. Call with the weights gathered (ZeRO-3)."""
    linear = isinstance(proj, nn.Linear)
    keep = keep.to(proj.weight.device)
    # Linear weight is [out, in]; Conv1D is [in, out]: the neuron axis is 0 for one and 1 for the other.
    axis = (0 if linear else 1) if side == "out" else (1 if linear else 0)
    proj.weight = _frozen(proj.weight.index_select(axis, keep))
    if side == "out" and proj.bias is not None:
        proj.bias = _frozen(proj.bias.index_select(0, keep))
    k = len(keep)
    if linear and side == "out":
        proj.out_features = k
    elif linear:
        proj.in_features = k
    elif side == "out":
        proj.nf = k
    else:
        proj.nx = k


def slice_ffn(ref: FFNRef, keep: torch.Tensor) -> None:
    """Reduce `ref`'s FFN to the neurons `keep` (sorted int64 indices into d_ff), in place.

    Rows of the input projections (columns for Conv1D) and columns of the output projection are kept; the
    output bias is untouched. The sliced FFN equals the full FFN with the dropped neurons' activations set
    to 0. Under ZeRO-3 the weights are gathered first; the new (smaller, unpartitioned) parameters are
    partitioned by the next deepspeed.initialize.
    """
    keep = torch.as_tensor(keep, dtype=torch.long)
    if keep.dim() != 1 or len(keep) == 0 or not bool((keep[1:] > keep[:-1]).all()) or int(keep[-1]) >= ref.d_ff:
        raise ValueError(f"keep must be sorted unique indices in [0, {ref.d_ff}), got {keep.tolist()[:8]}...")
    projections = [(p, "out") for p in ref.input_projections()] + [(ref.output_projection(), "in")]
    params = [t for p, _ in projections for t in (p.weight, p.bias) if t is not None]
    with gathered(params):
        for proj, side in projections:
            _slice_projection(proj, keep, side)
