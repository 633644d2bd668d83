"""FPT partial models (depth, width), neuron scores, the FLOPs ledger arithmetic and stage plans."""
import json
import os
import re

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from ds_prompt import evenly_select_layers
from ds_prompt.errors import UserError
from ds_prompt.fpt.flops import (
    LengthStats,
    ModelShape,
    encoder_layer_flops,
    flops_fraction,
    step_flops,
    t5_decoder_layer_flops,
)
from ds_prompt.fpt.partial import PartialModelSpec, apply_partial, neuron_scores, top_neurons
from ds_prompt.fpt.plan import StagePlan, load_plan, preset_plan
from ds_prompt.models.family import Family
from ds_prompt.models.ffn import ffn_layers, layer_stacks, record_ffn_activations, slice_ffn
from ds_prompt.models.shortcuts import full_forward
from ds_prompt.models.tiny import build_tiny
from tests.helpers import REPO, SENTENCES, batch_of, prompted_tiny

WIDTH_ARCHS = ["bert", "roberta", "electra", "gpt2", "llama", "qwen2", "t5", "t5_gated"]


# ----------------------------------------------------------------------------------------------- depth


def test_layer_indices_equal_the_papers_for_24_layers():
    assert evenly_select_layers(24, 6) == [0, 4, 8, 13, 18, 23]
    assert evenly_select_layers(24, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
    assert evenly_select_layers(24, 18) == list(range(12)) + [13, 15, 17, 19, 21, 23]
    assert evenly_select_layers(24, 24) == list(range(24))


@pytest.mark.parametrize("num_layers", range(1, 13))
def test_layer_indices_are_sane_for_small_depths(num_layers):
    for keep in range(1, num_layers + 1):
        idx = evenly_select_layers(num_layers, keep)
        assert len(idx) == keep and idx == sorted(set(idx)), (num_layers, keep, idx)
        assert idx[0] == 0 and all(0 <= i < num_layers for i in idx)
        if keep >= 2:
            assert idx[-1] == num_layers - 1
            gaps = [b - a for a, b in zip(idx, idx[1:])]
            assert max(gaps) - min(gaps) <= 1 and gaps == sorted(gaps), "even spread, short gaps first"
    assert evenly_select_layers(num_layers, num_layers) == list(range(num_layers))
    assert evenly_select_layers(num_layers, 1) == [0], "one layer: the first (T5's position bias lives there)"


@pytest.mark.parametrize("keep,needle", [(0, "cannot keep 0 of 12"), (-1, "cannot keep -1"),
                                         (13, "cannot keep 13 of 12"), (2.5, "2.5"), (True, "True")])
def test_bad_layer_counts_raise_user_errors(keep, needle):
    with pytest.raises(UserError, match=needle):
        evenly_select_layers(12, keep)


def _deep_model(arch: str, layers: int = 6):
    """A randomly initialized model with `layers` layers per stack (d=32)."""
    torch.manual_seed(0)
    common = dict(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    if arch == "bert":
        return BertForMaskedLM(BertConfig(**common, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=layers, n_head=2, n_inner=64,
                                          n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=1))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=1))
    return T5ForConditionalGeneration(T5Config(vocab_size=120, d_model=32, d_kv=16, d_ff=64, num_layers=layers,
                                               num_decoder_layers=layers - 1, num_heads=2, dropout_rate=0.0,
                                               decoder_start_token_id=0, feed_forward_proj="gated-gelu"))


def _native_subset(arch: str, full, kept: dict[str, list[int]]):
    """A model BUILT with the kept layers' count, loaded with the kept layers' weights (the oracle)."""
    n = {path: len(idx) for path, idx in kept.items()}
    if arch == "t5":
        native = T5ForConditionalGeneration(type(full.config)(**dict(
            full.config.to_dict(), num_layers=n["encoder.block"], num_decoder_layers=n["decoder.block"])))
    else:
        native = _deep_model(arch, next(iter(n.values())))
    state = {}
    for key, value in full.state_dict().items():
        for path, idx in kept.items():
            m = re.match(rf"{re.escape(path)}\.(\d+)\.(.*)", key)
            if m:
                if int(m.group(1)) in idx:
                    state[f"{path}.{idx.index(int(m.group(1)))}.{m.group(2)}"] = value
                break
        else:
            state[key] = value
    native.load_state_dict(state, strict=True)
    return native.eval()


def _logits(model, ids, **kw):
    if model.config.is_encoder_decoder:
        return model(input_ids=ids, decoder_input_ids=ids[:, :3], **kw).logits
    return model(input_ids=ids, **kw).logits


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "qwen2", "t5"])
def test_depth_reduction_equals_a_model_built_with_the_kept_layers(arch):
    full = _deep_model(arch).eval()
    ids = torch.randint(3, 120, (2, 9))
    modules_before = {stack.path: list(stack.layers) for stack in layer_stacks(full)}
    info = apply_partial(full, PartialModelSpec(depth=3))
    assert all(v == [0, 2, 5] for k, v in info.layers.items() if k != "decoder.block")
    if arch == "t5":
        assert info.layers["decoder.block"] == [0, 2, 4]
    for stack in layer_stacks(full):  # the kept layers are the full model's modules, not copies
        assert [id(m) for m in stack.layers] == [id(modules_before[stack.path][i]) for i in info.layers[stack.path]]
        idx = [m.layer_idx for layer in stack.layers for m in layer.modules()
               if isinstance(getattr(m, "layer_idx", None), int)]
        assert set(idx) == {0, 1, 2}, "layer_idx renumbered for KV caches"
    native = _native_subset(arch, _deep_model(arch), info.layers)
    with torch.no_grad():
        torch.testing.assert_close(_logits(full, ids), _logits(native, ids), atol=0, rtol=0)
        if arch in ("llama", "qwen2", "t5"):  # a KV cache sized by the updated config still works
            torch.testing.assert_close(_logits(full, ids, use_cache=True), _logits(native, ids), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------- width


def _mask_dropped(model, keep: dict[str, torch.Tensor]):
    """Zero the dropped neurons' activations of the FULL model (hooks on the output projections)."""
    handles = []
    for ref in ffn_layers(model):
        mask = torch.zeros(ref.d_ff)
        mask[keep[ref.name]] = 1.0
        handles.append(ref.output_projection().register_forward_pre_hook(
            lambda _m, args, mask=mask: (args[0] * mask.to(args[0].dtype),)))
    return handles


@pytest.mark.parametrize("arch", WIDTH_ARCHS)
def test_width_slicing_equals_masking_the_dropped_neurons(arch):
    full, tok = build_tiny(arch)
    sliced, _ = build_tiny(arch)
    gen = torch.Generator().manual_seed(1)
    scores = {ref.name: torch.rand(ref.d_ff, generator=gen) for ref in ffn_layers(full)}
    keep = {name: top_neurons(s, 24) for name, s in scores.items()}
    untouched = {n: p.data_ptr() for n, p in sliced.named_parameters() if "mlp" not in n and "Dense" not in n
                 and "intermediate" not in n and "output.dense" not in n}
    info = apply_partial(sliced, PartialModelSpec(width=24 / 64), scores)
    assert set(info.neurons.values()) == {24}
    for ref in ffn_layers(sliced):
        assert ref.d_ff == 24
        for proj in ref.input_projections():
            assert proj.weight.numel() == 24 * 32
    shared = {n: p.data_ptr() for n, p in sliced.named_parameters() if n in untouched}
    assert shared and shared == {n: untouched[n] for n in shared}, "weights outside the FFNs are not copied"
    _mask_dropped(full, keep)
    ids = tok(["a partial model keeps some neurons", "ok"], padding=True, return_tensors="pt")
    with torch.no_grad():
        kw = dict(attention_mask=ids["attention_mask"])
        torch.testing.assert_close(_logits(sliced, ids["input_ids"], **kw), _logits(full, ids["input_ids"], **kw),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", WIDTH_ARCHS)
def test_partial_model_with_all_layers_and_neurons_equals_the_full_model(arch):
    full, tok = build_tiny(arch)
    partial, _ = build_tiny(arch)
    apply_partial(partial, PartialModelSpec(depth=2, width=1.0))  # an int depth = every layer of each stack
    for ref in ffn_layers(partial):  # and the slicing path itself, keeping every neuron
        slice_ffn(ref, torch.arange(ref.d_ff))
    ids = tok(["every layer and every neuron"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(_logits(partial, ids), _logits(full, ids))


@pytest.mark.parametrize("arch", ["bert", "t5_gated"])
def test_ffns_are_found_through_activation_checkpointing_wrappers(arch):
    from ds_prompt.models.checkpointing import enable_activation_checkpointing
    model, tok = build_tiny(arch)
    names = [(r.name, r.inputs, r.output) for r in ffn_layers(model)]
    enable_activation_checkpointing(model)
    assert [(r.name, r.inputs, r.output) for r in ffn_layers(model)] == names
    ids = tok(["wrapped layers"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), record_ffn_activations(model) as acts:
        _logits(model, ids)
    assert sorted(acts) == sorted(n for n, _, _ in names)


def test_selections_are_nested_even_with_ties():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9, 0.5, 0.3, 0.5])
    chosen = [set(top_neurons(scores, k).tolist()) for k in range(1, 9)]
    assert all(a < b for a, b in zip(chosen, chosen[1:]))
    assert top_neurons(scores, 3).tolist() == [0, 1, 4]
    model, _ = build_tiny("llama")
    s = {ref.name: torch.rand(ref.d_ff) for ref in ffn_layers(model)}
    kept = []
    for width in (0.25, 0.5, 0.75):
        m, _ = build_tiny("llama")
        weights_before = {ref.name: ref.input_projections()[0].weight.clone() for ref in ffn_layers(m)}
        apply_partial(m, PartialModelSpec(width=width), s)
        ref = ffn_layers(m)[0]
        rows = weights_before[ref.name]
        kept.append({int((rows == r).all(1).nonzero()) for r in ref.input_projections()[0].weight})
    assert kept[0] < kept[1] < kept[2]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
def test_neuron_scores_exclude_padding_and_pool_over_tokens(arch):
    bb, model, enc = prompted_tiny(arch)
    encoded, batch = batch_of(bb, enc, SENTENCES)
    together = neuron_scores(model, [batch])
    singles = [batch_of(bb, enc, [s])[1] for s in SENTENCES]
    alone = [neuron_scores(model, [b]) for b in singles]
    real = [int(b["attention_mask"].sum()) + model.prompt.length for b in singles]
    for ref in ffn_layers(bb.model):
        if ref.stack == "decoder.block":  # one decoder step per example: a plain mean
            want = sum(a[ref.name] for a in alone) / len(alone)
        else:
            want = sum(n * a[ref.name] for n, a in zip(real, alone)) / sum(real)
        torch.testing.assert_close(together[ref.name], want, atol=1e-5, rtol=1e-5)
    with record_ffn_activations(bb.model) as acts, torch.no_grad(), full_forward(model):  # every token
        model(*(singles[0][k] for k in ("input_ids", "attention_mask", "score_index")))
        first = ffn_layers(bb.model)[0]
        manual = acts[first.name][0].abs().mean(0)
    torch.testing.assert_close(alone[0][first.name], manual, atol=1e-6, rtol=1e-5)


def test_partial_spec_validation_names_the_bad_value():
    for depth in (0, -2, 0.0, 1.5, "half", True):
        with pytest.raises(UserError, match=re.escape(repr(depth))):
            PartialModelSpec(depth=depth)
    for width in (0.0, 1.01, -0.5, "a"):
        with pytest.raises(UserError, match=re.escape(repr(width))):
            PartialModelSpec(width=width)
    with pytest.raises(UserError, match="depth 3 exceeds"):
        apply_partial(build_tiny("bert")[0], PartialModelSpec(depth=3))
    with pytest.raises(UserError, match="needs neuron scores"):
        apply_partial(build_tiny("bert")[0], PartialModelSpec(width=0.5))
    quantized, _ = build_tiny("llama")
    quantized.config.quantization_config = {"load_in_4bit": True}
    with pytest.raises(UserError, match="quantized"):
        scores = {r.name: torch.rand(r.d_ff) for r in ffn_layers(quantized)}
        apply_partial(quantized, PartialModelSpec(width=0.5), scores)


def test_width_slicing_gathers_zero3_partitioned_weights():
    import deepspeed

    from ds_prompt.engine.setup import init_distributed
    init_distributed()
    config = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64))
    ref = ffn_layers(model)[0]
    fc = ref.input_projections()[0]
    assert hasattr(fc.weight, "ds_id") and fc.weight.numel() == 0, "weights are ZeRO-3 partitioned"
    with deepspeed.zero.GatheredParameters([fc.weight, ref.output_projection().weight]):
        w_in, w_out = fc.weight.detach().clone(), ref.output_projection().weight.detach().clone()
    keep = torch.tensor([1, 5, 9, 33, 63])
    slice_ffn(ref, keep)
    assert torch.equal(ref.input_projections()[0].weight, w_in[:, keep]), "Conv1D: neurons are columns of c_fc"
    assert torch.equal(ref.output_projection().weight, w_out[keep, :])
    assert not hasattr(ref.input_projections()[0].weight, "ds_id"), "new params are left for deepspeed.initialize"


def test_forwards_through_a_zero3_partitioned_model_gather_one_layer_at_a_time():
    import deepspeed

    from ds_prompt.engine.setup import init_distributed
    from ds_prompt.models.ffn import gathered_layerwise
    init_distributed()
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, pad_token_id=None,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 1, "zero_optimization": {"stage": 3}}):
        part = BertForMaskedLM(config).eval()
    plain = BertForMaskedLM(config).eval()
    with deepspeed.zero.GatheredParameters(list(part.parameters())):
        plain.load_state_dict(part.state_dict())
    stacks = layer_stacks(part)[0].layers
    whole_during = []
    for layer in stacks:
        layer.register_forward_hook(lambda m, a, o: whole_during.append(
            [sum(p.numel() for p in other.parameters()) > 0 for other in stacks]))
    ids = torch.randint(3, 120, (2, 7))
    with torch.no_grad(), gathered_layerwise(part), record_ffn_activations(part) as got:
        logits = part(input_ids=ids).logits
    with torch.no_grad(), record_ffn_activations(plain) as want:
        torch.testing.assert_close(logits, plain(input_ids=ids).logits, atol=1e-6, rtol=1e-6)
    assert whole_during == [[True, False, False], [False, True, False], [False, False, True]]
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6)
    assert all(p.numel() == 0 for p in part.parameters()), "everything is partitioned again afterwards"


# ----------------------------------------------------------------------------------------------- FLOPs

T5_LARGE = ModelShape(Family.SEQ2SEQ, d_model=1024, d_attn=1024, d_kv=1024, d_ff=2816, gated=True,
                      layers={"encoder": 24, "decoder": 24}, head_params=1024 * 3)


def _fraction(plan: StagePlan, shape: ModelShape, layers_only: bool, backward="activations") -> float:
    lengths = LengthStats.fixed(492)
    per_stage = [(s.steps, step_flops(shape, lengths, 32, s.depth, s.width, backward, layers_only))
                 for s in plan.stages]
    return flops_fraction(per_stage, step_flops(shape, lengths, 32, backward=backward, layers_only=layers_only))


@pytest.mark.parametrize("shape", [T5_LARGE, ModelShape(Family.CAUSAL, 4096, 4096, 1024, 14336, True, {"decoder": 32}),
                                   ModelShape(Family.MLM, 1024, 1024, 1024, 4096, False, {"encoder": 24}, 1024 ** 2)])
@pytest.mark.parametrize("backward", ["activations", "standard"])
def test_layer_dropping_schedule_costs_070_of_the_layer_flops(shape, backward):
    plan = preset_plan("ld", 30000)
    assert [s.steps for s in plan.stages] == [6000, 6000, 6000, 12000]
    assert _fraction(plan, shape, layers_only=True, backward=backward) == pytest.approx(0.70, abs=1e-12)
    with_head = _fraction(plan, shape, layers_only=False, backward=backward)
    assert 0.70 <= with_head < 0.701, "the head is a sliver of the compute"
    fr, cr = _fraction(preset_plan("fr", 30000), shape, True), _fraction(preset_plan("cr", 30000), shape, True)
    assert cr < 0.70 and cr < fr < 1.0


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "qwen2", "t5_gated"])
def test_analytic_weight_flops_match_the_modules_parameter_counts(arch):
    model, _ = build_tiny(arch)
    family = Family.SEQ2SEQ if arch.startswith("t5") else Family.CAUSAL if arch in ("gpt2", "llama", "qwen2") \
        else Family.MLM
    shape = ModelShape.from_model(model, family)
    stacks = layer_stacks(model)

    def matmul_params(layer):
        return sum(m.weight.numel() for m in layer.modules()
                   if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    s = 11
    first = encoder_layer_flops(shape, LengthStats.fixed(s), shape.d_ff)
    assert first.weights == 2 * s * matmul_params(stacks[0].layers[0])
    assert first.attention == 4 * s * s * shape.d_attn
    if family is Family.SEQ2SEQ:  # one decoder step over one encoder state touches every decoder weight once
        assert t5_decoder_layer_flops(shape, LengthStats.fixed(1), shape.d_ff).weights == \
            2 * matmul_params(stacks[1].layers[0])
    half = encoder_layer_flops(shape, LengthStats.fixed(s), shape.d_ff // 2)
    ffn = sum(p.weight.numel() for p in ffn_layers(model)[0].input_projections()) + \
        ffn_layers(model)[0].output_projection().weight.numel()
    assert first.weights - half.weights == 2 * s * ffn / 2


# ----------------------------------------------------------------------------------------------- plans


def test_presets_scale_the_paper_schedule():
    assert [(s.depth, s.width, s.steps) for s in preset_plan("cr", 100).stages] == \
        [(0.25, 0.25, 20), (0.5, 0.5, 20), (0.75, 0.75, 20), (1.0, 1.0, 40)]
    assert preset_plan("ld", 10).end_steps() == [2, 4, 6, 10]
    assert [s.steps for s in preset_plan("pt", 7).stages] == [7]
    with pytest.raises(UserError, match="raise --max_steps"):
        preset_plan("ld", 3)
    with pytest.raises(UserError, match="'xx'"):
        preset_plan("xx", 100)


def test_plan_files_load_and_bad_values_are_named(tmp_path):
    good = tmp_path / "plan.yaml"
    good.write_text("launcher: torchrun --nproc_per_node 2\nstages:\n  - {depth: 6, width: 0.5, steps: 10}\n"
                    "  - {steps: 20, launcher: python}\n")
    plan = load_plan(str(good))
    assert plan.total_steps == 30 and plan.stages[0].depth == 6 and plan.stages[1].depth == 1.0
    assert plan.launcher_for(0) == "torchrun --nproc_per_node 2" and plan.launcher_for(1) == "python"
    assert load_plan(os.path.join(REPO, "examples", "fpt_ld.json")).total_steps == 30000
    bad = [({"stages": [{"steps": 0}]}, "steps 0"), ({"stages": [{"steps": 5, "depth": 1.5}]}, "depth 1.5"),
           ({"stages": [{"steps": 5, "width": 0}]}, "width 0"), ({"stages": [{"steps": 5, "layers": 3}]}, "layers"),
           ({"stages": []}, "non-empty"), ({"stages": [{"steps": 2.5}]}, "steps 2.5"),
           ({"stages": [{"steps": 5}], "luncher": "x"}, "luncher"), ({"stages": [{"steps": 5, "launcher": ""}]}, "''")]
    for data, needle in bad:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(UserError, match=re.escape(needle)):
            load_plan(str(path))
    with pytest.raises(UserError, match="neither a preset"):
        load_plan(str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="--max_steps"):
        load_plan("ld")


@pytest.mark.parametrize("shortcuts", [False, True], ids=["full", "shortcuts"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "gpt2", "llama", "qwen2", "t5", "t5_gated"])
def test_analytic_forward_flops_equal_torch_flop_counter(arch, shortcuts):
    """The ledger's forward count per example equals what torch.utils.flop_counter counts for a prompted
    forward (batch of equal lengths: no padding), T5 through its factored one-query cross-attention; with the
    exact shortcuts on, the ledger's shortcut count equals what they compute (last layer at the scoring
    position; causal: the prompt prefix once per batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ds_prompt.fpt.flops import ComputeShortcuts
    from ds_prompt.models.shortcuts import can_share_prefix, eligible
    from tests.helpers import prompted_tiny
    bb, model, _ = prompted_tiny(arch, prompt_length=3)
    bb.model.set_attn_implementation("eager")  # the CPU SDPA kernel has no FLOP formula in the counter
    model.shortcuts = shortcuts
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    score = torch.full((2,), 4, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model.representation(ids, mask, score)
    shape = ModelShape.from_model(bb.model, bb.family)
    taken = ComputeShortcuts(eligible(bb.model), 3 if can_share_prefix(bb.model) else 0) if shortcuts else None
    analytic = step_flops(shape, LengthStats.fixed(3 + 9), 2, backward="standard", layers_only=True,
                          shortcuts=taken) / 3
    assert counter.get_total_flops() == pytest.approx(analytic, rel=1e-12)
    if taken is not None and taken.last_layer:  # and the shortcuts did compute less
        assert analytic < step_flops(shape, LengthStats.fixed(3 + 9), 2, backward="standard", layers_only=True) / 3


# MLM heads are left out: their d x d transform runs inside the backbone module, so the counter cannot split it
@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5_gated"])
def test_neuron_scoring_forward_flops_equal_torch_flop_counter(arch):
    """What FPT's report charges for neuron scoring (forward_flops per sample) is what the scoring forwards
    compute in the model's layers: every position of every layer, counted by torch.utils.flop_counter (the
    tiny label-word head is charged by the ledger's head convention, the same as in training steps)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ds_prompt.fpt.flops import forward_flops
    from tests.helpers import prompted_tiny
    bb, model, _ = prompted_tiny(arch, prompt_length=3)
    bb.model.set_attn_implementation("eager")  # the CPU SDPA kernel has no FLOP formula in the counter
    model.shortcuts = True  # scoring must switch them off by itself
    model.requires_grad_(False)  # the counter's module hooks cannot follow a trainable leaf under no_grad
    batches = [{"input_ids": torch.randint(5, 100, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long),
                "score_index": torch.full((2,), 4, dtype=torch.long)} for _ in range(2)]
    with FlopCounterMode(display=False) as counter:
        neuron_scores(model, batches)
    counts = counter.get_flop_counts()
    layers = counter.get_total_flops() - sum(counts.get("PromptedModel.head", {}).values())
    shape = ModelShape.from_model(bb.model, bb.family)
    assert layers == pytest.approx(4 * forward_flops(shape, LengthStats.fixed(3 + 9), layers_only=True), rel=1e-12)
    assert forward_flops(shape, LengthStats.fixed(12)) > forward_flops(shape, LengthStats.fixed(12), layers_only=True)
