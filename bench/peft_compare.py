"""ds_prompt vs HF PEFT PromptTuning vs a minimal plain-PyTorch loop (the floor) on the same model, data,
batch size, lengths, prompt length and steps.

    python -m bench.peft_compare --family mlm|causal|seq2seq [--quick] [--steps N] [--size tiny|small]
                                 [--task sst2 --data_dir ../shared/data] [--rounds 4] [--standard_t5_path]
    python -m bench.peft_compare --model smollm2|<hub id>|<folder>|<file.gguf> --task sst2 --data_dir D

All three train a prompt on the same frozen weights, same task examples, same global batch size, max length,
prompt length, optimizer (AdamW) and steps, in one process: one warm-up step each, then the timed steps in
`--rounds` alternating chunks (the order reversed every round) so that drift in the machine's speed hits all
alike. Each system uses its own natural pipeline:
- ds_prompt: the DeepSpeed engine (ZeRO-0), length-bucketed dynamic padding, label-word-only scoring, and its
  exact shortcuts (`--shortcuts off` for the ablation: the plain full forward);
- PEFT: `get_peft_model(PromptTuningConfig)`, random batches with dynamic padding, the model's full-vocabulary
  logits (what PEFT computes), cross-entropy over the label-word ids at the scoring position;
- floor: the obvious implementation written in plain PyTorch: ds_prompt's batches (same examples, same
  padding), [prompt; embeddings] through the HF base model, the label-word rows of the output matrix at the
  scoring position, torch AdamW; no engine, no shortcuts.
The class logits are the same function in all (label ids at the scoring position), so accuracy after the same
steps must agree within noise. Prints one line per system (tokens/s, s/step, GFLOPS, activation MB, accuracy),
the fp32/dtype matmul peak measured in the same process, then `vs_floor_ratio=<ds_prompt/floor>` and, last,
`tokens_per_s_ratio=<ds_prompt/PEFT>`. Tokens counted = non-pad text tokens + prompt tokens, per processed
example. GFLOPS = the full-forward FLOPs ledger (`fpt.flops`, activations-only backward) of the examples a
system processed, over its time: useful work per second, the same for every system on the same tokens.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench._memory import peak_rss_mib

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILY_ARCH = {"mlm": "bert", "causal": "gpt2", "seq2seq": "t5"}
DEVICE = torch.device("cpu")  # set by main (--device)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


PEFT_TASK = {"mlm": "FEATURE_EXTRACTION", "causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def on_device(batch: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in batch.items()}


def label_accuracy(logits_of, encoded, pad_id: int, left_pad: bool, batch_size: int = 64) -> float:
    """Accuracy of `logits_of(batch)` over `encoded` (the PEFT and floor systems' own evaluation loop)."""
    from ds_prompt.data.encoding import collate
    correct = 0
    with torch.no_grad():
        for s in range(0, len(encoded), batch_size):
            batch = on_device(collate(encoded[s:s + batch_size], pad_id, left_pad))
            correct += int((logits_of(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(encoded)


# Random-init causal models with the shapes of real ones: the speed of a step does not depend on the weights.
LLAMA_SHAPES = {"smollm2": dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
                                num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
                "llama1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=5632,
                                num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)}
SIZES = ["tiny", "small", *LLAMA_SHAPES]


def build_llama(size: str):
    """A random-init Llama of a real model's shape (SmolLM2-135M, a 1.1B Llama) with the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ds_prompt.models import tiny
    _, tok = tiny.build_tiny("llama")
    config = LlamaConfig(**LLAMA_SHAPES[size], max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config), tok


def build_model(family: str, size: str):
    """A random-init model of `family`: 'tiny' (2 layers, d=32), 'small' (6 layers, d=384, like MiniLM), or
    (causal only) the shape of SmolLM2-135M ('smollm2') or of a 1.1B Llama ('llama1b')."""
    from ds_prompt.models import tiny
    arch = FAMILY_ARCH[family]
    if size in LLAMA_SHAPES:
        if family != "causal":
            raise SystemExit(f"--size {size} is a causal (Llama) shape: use --family causal")
        return build_llama(size)
    if size == "tiny":
        return tiny.build_tiny(arch)
    saved = (tiny.D_MODEL, tiny.N_LAYERS, tiny.N_HEADS, tiny.D_FF)
    tiny.D_MODEL, tiny.N_LAYERS, tiny.N_HEADS, tiny.D_FF = 384, 6, 6, 1536
    try:
        return tiny.build_tiny(arch)
    finally:
        tiny.D_MODEL, tiny.N_LAYERS, tiny.N_HEADS, tiny.D_FF = saved


def _data(task_name, data_dir, n_train, n_eval, seed):
    from ds_prompt.data.loading import load_examples
    from ds_prompt.data.tasks import get_task
    task = get_task(task_name)
    return (task, load_examples(task, "train", data_dir, n_train, seed),
            load_examples(task, "eval", data_dir, n_eval, seed))


def prepare_ds_prompt(model, tok, family, task, train, evals, args):
    """ds_prompt's own pipeline: (step(batch indices) -> tokens, its batches, evaluate() -> accuracy)."""
    from ds_prompt.builders import build_prompted
    from ds_prompt.data.encoding import BatchPlan, collate
    from ds_prompt.engine import setup
    from ds_prompt.engine.evaluate import evaluate
    from ds_prompt.models.backbone import Backbone, freeze
    from ds_prompt.models.family import Family
    setup.init_distributed()
    bb = Backbone(freeze(model), tok, Family(family), "bench")
    tok.padding_side = "left" if family == "causal" else "right"
    built = build_prompted(bb, task, args.prompt_length, args.max_length, "label_words", "normal:0.02", args.seed)
    built.model.shortcuts = args.shortcuts != "off"
    enc = [built.encoder.encode(e) for e in train]
    ev = [built.encoder.encode(e) for e in evals]
    plan = BatchPlan([len(e.input_ids) for e in enc], args.batch_size, args.seed, bucket=True)
    cfg = setup.fill_ds_config(setup.load_ds_config("zero0"), args.batch_size, 1, 1.0, 1, args.dtype)
    opt = setup.build_optimizer("adamw", [p for p in built.model.parameters() if p.requires_grad], args.lr, 0.0)
    engine, _, _ = setup.initialize_engine(built.model, cfg, opt, setup.build_scheduler("constant", opt, 0, 1))
    left = family == "causal"
    batches = [b for e in range(100) for b in plan.epoch(e)][: args.steps + 1]

    def step(idx):
        batch = on_device(collate([enc[i] for i in idx], tok.pad_token_id, left))
        loss = F.cross_entropy(engine(batch["input_ids"], batch["attention_mask"], batch["score_index"]),
                               batch["labels"])
        engine.backward(loss)
        engine.step()
        return float(batch["attention_mask"].sum()) + args.prompt_length * len(idx)

    return SimpleNamespace(step=step, batches=batches, model=built.model, encoded=enc, evaluate=lambda: evaluate(
        engine, ev, 64, tok.pad_token_id, left, DEVICE)["accuracy"])


def prepare_floor(model, tok, family, task, ours, evals, args):
    """The minimal plain-PyTorch prompt-tuning loop on `ours`' batches and encodings (see the module doc)."""
    from ds_prompt.data.encoding import TemplateEncoder, collate
    from ds_prompt.models.family import Family
    from ds_prompt.models.heads import LabelWordHead, head_transform
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    emb = model.get_input_embeddings()
    prompt = torch.nn.Parameter(ours.model.prompt.weight.detach().float().clone())  # ds_prompt's initial prompt
    head = LabelWordHead.from_model(model, tok, task.label_words)
    transform = head_transform(model, Family(family))
    opt = torch.optim.AdamW([prompt], lr=args.lr, weight_decay=0.0)  # ds_prompt's optimizer settings
    left = family == "causal"
    ev = [TemplateEncoder(task, tok, Family(family), args.max_length, args.prompt_length).encode(e) for e in evals]

    def logits_of(batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        x = emb(ids)
        x = torch.cat([prompt.to(x.dtype).expand(len(ids), -1, -1), x], 1)
        mask = torch.cat([mask.new_ones(len(ids), args.prompt_length), mask], 1)
        if family == "seq2seq":
            enc = model.get_encoder()(inputs_embeds=x, attention_mask=mask).last_hidden_state
            start = torch.full((len(ids), 1), model.config.decoder_start_token_id, dtype=torch.long, device=DEVICE)
            h = model.get_decoder()(input_ids=start, encoder_hidden_states=enc, encoder_attention_mask=mask,
                                    use_cache=False).last_hidden_state[:, 0]
        elif left:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            h = model.base_model(inputs_embeds=x, attention_mask=mask, position_ids=positions,
                                 use_cache=False).last_hidden_state[:, -1]
        else:
            hidden = model.base_model(inputs_embeds=x, attention_mask=mask).last_hidden_state
            h = hidden[torch.arange(len(ids), device=DEVICE), batch["score_index"] + args.prompt_length]
        return head(transform(h))

    def step(idx):
        batch = on_device(collate([ours.encoded[i] for i in idx], tok.pad_token_id, left))
        loss = F.cross_entropy(logits_of(batch), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([prompt], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(batch["attention_mask"].sum()) + args.prompt_length * len(idx)

    def evaluate():
        return label_accuracy(logits_of, ev, tok.pad_token_id, left)
    module = torch.nn.Module()
    module.prompt = prompt
    return SimpleNamespace(step=step, batches=ours.batches, model=torch.nn.ModuleList([model, module]),
                           encoded=ours.encoded, evaluate=evaluate)


def prepare_peft(model, tok, family, task, train, evals, args):
    """PEFT's pipeline: (step(batch indices) -> tokens, its batches, evaluate() -> accuracy)."""
    import peft

    from ds_prompt.data.encoding import TemplateEncoder, collate
    from ds_prompt.models.family import Family
    from ds_prompt.models.heads import class_matrix, label_word_ids
    for p in model.parameters():
        p.requires_grad_(False)
    pm = peft.get_peft_model(model, peft.PromptTuningConfig(task_type=PEFT_TASK[family],
                                                            num_virtual_tokens=args.prompt_length))
    with torch.no_grad():
        g = torch.Generator().manual_seed(args.seed)
        emb = pm.prompt_encoder["default"].embedding.weight
        emb.copy_(torch.randn(emb.shape, generator=g) * 0.02)
    tok.padding_side = "left" if family == "causal" else "right"
    encoder = TemplateEncoder(task, tok, Family(family), args.max_length, args.prompt_length)
    enc = [encoder.encode(e) for e in train]
    ev = [encoder.encode(e) for e in evals]
    ids, mat = class_matrix(label_word_ids(tok, task.label_words))
    ids, mat = ids.to(DEVICE), mat.to(DEVICE)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=args.lr)
    left = family == "causal"
    rng = random.Random(args.seed)

    def logits_of(batch):
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if family == "seq2seq":
            start = model.config.decoder_start_token_id
            kw["decoder_input_ids"] = torch.full((len(batch["labels"]), 1), start, dtype=torch.long, device=DEVICE)
            vocab = pm(**kw).logits[:, 0]
        else:
            out = pm(**kw).logits
            pos = (out.shape[1] - 1) if left else (args.prompt_length + batch["score_index"])
            rows = torch.arange(out.shape[0], device=DEVICE)
            vocab = out[rows, pos] if not left else out[:, -1]
        return vocab[:, ids].float() @ mat.T

    def step(idx):
        batch = on_device(collate([enc[i] for i in idx], tok.pad_token_id, left))
        loss = F.cross_entropy(logits_of(batch), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(batch["attention_mask"].sum()) + args.prompt_length * len(idx)

    order = list(range(len(enc)))
    batches = []
    while len(batches) < args.steps + 1:
        rng.shuffle(order)
        batches += [order[s:s + args.batch_size] for s in range(0, len(order) - args.batch_size + 1, args.batch_size)]
    pm.train()
    model.eval()

    def evaluate():
        return label_accuracy(logits_of, ev, tok.pad_token_id, left)
    return SimpleNamespace(step=step, batches=batches[:args.steps + 1], model=pm, encoded=enc,
                           evaluate=evaluate)


def saved_activation_mb(system, idx) -> float:
    """MB of tensors autograd keeps for backward during one step (distinct storages, the model's own weights
    excluded): the activation memory of a step, independent of the allocator and of the other system."""
    weights = {p.untyped_storage().data_ptr() for p in system.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        system.step(idx)
    return sum(seen.values()) / 2**20


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """This device's dense matmul throughput at `dtype` ([n, n] @ [n, n], n = 1024 on CPU, 8192 on GPU,
    repeated for about `seconds`)."""
    n = 8192 if DEVICE.type == "cuda" else 1024
    a, b = (torch.randn(n, n, dtype=dtype, device=DEVICE) for _ in range(2))
    a @ b
    _sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        _sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def ledger_flops(model, family: str, prompt_length: int, examples: list[int], encoded) -> float:
    """Full-forward training FLOPs (activations-only backward) of the examples `examples` of `encoded`."""
    from ds_prompt.fpt.flops import LengthStats, ModelShape, step_flops
    from ds_prompt.models.family import Family
    shape = ModelShape.from_model(model, Family(family))
    lengths = [prompt_length + len(encoded[i].input_ids) for i in examples]
    return step_flops(shape, LengthStats.of(lengths), len(lengths))


def measure(systems: dict, steps: int, rounds: int, flops_of=None) -> dict:
    """One warm-up step each (its saved activations measured), then `rounds` chunks of steps/rounds steps per
    system, alternating which system goes first, so drift in machine speed hits both alike. Per system:
    tokens/s and s/step over all its timed steps, the process's peak RSS, and the activation MB of its first
    step (each system's own first batch)."""
    names = list(systems)
    stats = {n: {"tokens": 0.0, "seconds": 0.0, "peak_rss_mb": 0.0, "flops": 0.0} for n in names}
    for n in names:
        stats[n]["activation_mb"] = saved_activation_mb(systems[n], systems[n].batches[0])
    bounds = [1 + steps * r // rounds for r in range(rounds + 1)]
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0, tokens = time.perf_counter(), 0.0
            chunk = systems[n].batches[bounds[r]:bounds[r + 1]]
            for idx in chunk:
                tokens += systems[n].step(idx)
            _sync()
            st = stats[n]
            if flops_of is not None:
                st["flops"] += sum(flops_of(systems[n], idx) for idx in chunk)
            st["seconds"] += time.perf_counter() - t0
            st["tokens"] += tokens
            st["peak_rss_mb"] = max(st["peak_rss_mb"], peak_rss_mib())
    return {n: {"tokens_per_s": st["tokens"] / st["seconds"], "s_per_step": st["seconds"] / steps,
                "gflops": st["flops"] / st["seconds"] / 1e9,
                "peak_rss_mb": st["peak_rss_mb"], "activation_mb": st["activation_mb"],
                "accuracy": systems[n].evaluate()} for n, st in stats.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILY_ARCH),
                        help="a random-init model of this family (see --size); or give --model")
    parser.add_argument("--model", default=None,
                        help="a pretrained backbone as `ds-prompt train --model` takes it (smollm2, .gguf, ...)")
    parser.add_argument("--quick", action="store_true", help="tiny config, few steps: under a minute on CPU")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--prompt_length", type=int, default=20)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--n_train", type=int, default=400)
    parser.add_argument("--n_eval", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=4, help="alternating timed chunks per system")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if present")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="weights and compute (bf16 is for GPUs: ~150x slower than fp32 on this CPU)")
    parser.add_argument("--shortcuts", choices=("on", "off", "both"), default="on",
                        help="ds_prompt's exact shortcuts (last layer at the scoring position, causal shared "
                             "prompt prefix); off = the plain full forward; both = a fourth system "
                             "ds_prompt_full (shortcuts off) in the same alternation, for the ablation")
    parser.add_argument("--standard_t5_path", action="store_true",
                        help="ablation: ds_prompt without the factored one-query cross-attention (T5)")
    args = parser.parse_args(argv)
    if (args.family is None) == (args.model is None):
        parser.error("give exactly one of --family (random-init model) and --model (pretrained backbone)")
    if args.standard_t5_path:
        from ds_prompt.models import t5_step
        t5_step._eligible = lambda attn: False
    if args.quick:
        args.size, args.steps, args.n_train, args.n_eval = "tiny", 8, 200, 64
    torch.manual_seed(args.seed)
    if args.model is not None:
        from ds_prompt.models.backbone import load_backbone
        backbone = load_backbone(args.model, dtype="auto")
        model, tok, args.family, args.size = backbone.model, backbone.tokenizer, backbone.family.value, args.model
        if args.family not in PEFT_TASK:
            parser.error(f"--model {args.model} is a {args.family} model: the bench compares label-word heads")
    else:
        model, tok = build_model(args.family, args.size)
    global DEVICE
    DEVICE = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = model.to(DEVICE, DTYPES[args.dtype])
    peft_model, floor_model = copy.deepcopy(model), copy.deepcopy(model)
    full_model = copy.deepcopy(model) if args.shortcuts == "both" else None
    task, train, evals = _data(args.task, args.data_dir, args.n_train, args.n_eval, args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"family={args.family} size={args.size} task={args.task} steps={args.steps} batch={args.batch_size} "
          f"prompt={args.prompt_length} max_length={args.max_length} shortcuts={args.shortcuts} "
          f"device={DEVICE.type} dtype={args.dtype} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} load_before={load:.1f}")
    ours = prepare_ds_prompt(model, tok, args.family, task, train, evals, args)
    systems = {"ds_prompt": ours,
               "peft": prepare_peft(peft_model, copy.deepcopy(tok), args.family, task, train, evals, args),
               "floor": prepare_floor(floor_model, tok, args.family, task, ours, evals, args)}
    if full_model is not None:
        full = prepare_ds_prompt(full_model, tok, args.family, task, train, evals,
                                 argparse.Namespace(**{**vars(args), "shortcuts": "off"}))
        systems["ds_prompt_full"] = full
    peft_enc = systems["peft"].encoded
    dtype = next(model.parameters()).dtype

    def flops_of(system, idx):
        encoded = peft_enc if system is systems["peft"] else system.encoded
        return ledger_flops(model, args.family, args.prompt_length, idx, encoded)
    results = measure(systems, args.steps, min(args.rounds, args.steps), flops_of)
    peak = matmul_peak_gflops(dtype)
    for name, r in results.items():
        print(f"{name:9s} tokens/s={r['tokens_per_s']:.1f} s/step={r['s_per_step']:.4f} gflops={r['gflops']:.1f} "
              f"accuracy={r['accuracy']:.4f} activation_mb={r['activation_mb']:.1f} "
              f"peak_rss_mb={r['peak_rss_mb']:.0f} (process: all model copies resident)")
    print(f"matmul_peak_gflops={peak:.1f} ({str(dtype).replace('torch.', '')}, {DEVICE.type}, same process)")
    ratio = results["ds_prompt"]["tokens_per_s"] / results["peft"]["tokens_per_s"]
    floor_ratio = results["ds_prompt"]["tokens_per_s"] / results["floor"]["tokens_per_s"]
    print(f"s_per_step_ratio={results['peft']['s_per_step'] / results['ds_prompt']['s_per_step']:.3f} "
          f"(PEFT/ds_prompt)")
    if "ds_prompt_full" in results:
        full_tps = results["ds_prompt_full"]["tokens_per_s"]
        print(f"full_forward_vs_floor_ratio={full_tps / results['floor']['tokens_per_s']:.3f}")
        print(f"shortcut_speedup={results['ds_prompt']['tokens_per_s'] / full_tps:.3f} (ds_prompt / ds_prompt_full)")
    print(f"vs_floor_ratio={floor_ratio:.3f}")
    print(f"tokens_per_s_ratio={ratio:.3f}")
    return {**results, "ratio": ratio, "vs_floor_ratio": floor_ratio, "matmul_peak_gflops": peak}


if __name__ == "__main__":
    main()
