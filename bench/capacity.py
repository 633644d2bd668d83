"""Largest frozen model that trains a prompt on this machine: one prompt-tuning step per model size.

    python -m bench.capacity --sizes 0.5,1,3,5 [--checkpointing] [--seq 64] [--batch 2]
    python -m bench.capacity --sizes 7 --quantization nf4|int8 [--workdir /tmp/ds_prompt_capacity]
    python -m bench.capacity --device cuda --sizes 1,3,7 [--seq 512 --batch 8]   # bf16 on a GPU

Random-init Llama-style decoders (capacity only: the weights are random, stated in the output), fp32 on CPU.
Each size runs in a fresh subprocess (so peak memory does not accumulate): build on the meta device, fill with
N(0, 0.02), wrap in ds_prompt's PromptedModel (20-token prompt, label-word head), one forward + backward +
AdamW step on the prompt. Prints one line per size: params, peak RSS (GiB), seconds for the step, ok/failed.
With --device cuda the weights are bf16 on the GPU and the line adds the peak GPU memory (max allocated).

With --quantization the model takes the user's path: a random-init checkpoint (bf16 safetensors shards, written
once per size under --workdir without ever holding the whole model) is loaded by `load_backbone(folder,
quantization=...)`, i.e. bitsandbytes quantizes it shard by shard while loading; compute in fp32.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench._memory import peak_rss_mib, status_mib

DEFAULT_WORKDIR = "/tmp/ds_prompt_capacity"

# (hidden, layers, heads, kv_heads, ffn) roughly at the named parameter counts (billions), vocab 30522
SHAPES = {0.5: (1024, 24, 16, 8, 4096), 1: (2048, 16, 16, 8, 5632), 3: (2560, 32, 20, 4, 8960),
          5: (3584, 28, 28, 4, 11008), 7: (4096, 32, 32, 8, 14336)}


def _config(size: float, vocab: int):
    from transformers import LlamaConfig
    hidden, layers, heads, kv, ffn = SHAPES[size]
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=512, pad_token_id=0,
                       bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)


def write_random_checkpoint(size: float, folder: Path, shard_bytes: int = 2 << 30) -> Path:
    """A random-init (N(0, 0.02), bf16) HF checkpoint of `size`, written tensor by tensor in shards."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from ds_prompt.models.tiny import tiny_tokenizer
    if (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    config = _config(size, len(tok))
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, shard_size, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, shard_size, index
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, shard_size, index = {}, 0, index + 1

    for key, shape in shapes.items():
        shard[key] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        shard_size += shard[key].numel() * 2
        if shard_size >= shard_bytes:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(s.numel() * 2 for s in shapes.values())}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def one_size(size: float, seq: int, batch: int, checkpointing: bool, quantization: str = "none",
             workdir: str = DEFAULT_WORKDIR, device: str = "cpu") -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from ds_prompt.builders import build_prompted
    from ds_prompt.data.encoding import collate
    from ds_prompt.data.loading import load_examples
    from ds_prompt.data.tasks import get_task
    from ds_prompt.models.backbone import Backbone, freeze
    from ds_prompt.models.checkpointing import enable_activation_checkpointing
    from ds_prompt.models.family import Family
    from ds_prompt.models.tiny import tiny_tokenizer
    if quantization != "none":
        from ds_prompt.models.backbone import load_backbone
        folder = Path(workdir) / f"random-llama-{size}B"
        bb = load_backbone(str(folder), family="causal", dtype="fp32", quantization=quantization)
        model, tok = bb.model, bb.tokenizer
        params = sum(_logical_numel(p) for p in model.parameters())
    else:
        tok = tiny_tokenizer()
        tok.padding_side = "left"
        config = _config(size, len(tok))
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device=device).to(torch.bfloat16 if device == "cuda" else torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)  # inv_freq was built on meta
        params = sum(p.numel() for p in model.parameters())
        bb = Backbone(freeze(model), tok, Family.CAUSAL, f"random-llama-{size}B")
    if checkpointing:
        enable_activation_checkpointing(model)
    built = build_prompted(bb, get_task("demo"), 20, seq + 20, "label_words", "normal:0.02", 0)
    examples = load_examples(get_task("demo"), "train", None, limit=batch)
    b = collate([built.encoder.encode(e) for e in examples], tok.pad_token_id, True)
    b = {k: v.to(device) for k, v in b.items()}
    built.model.to(device)
    opt = torch.optim.AdamW([built.model.prompt.weight], lr=1e-3)
    loaded_peak = peak_rss_mib() / 1024
    t0 = time.perf_counter()
    loss = F.cross_entropy(built.model(b["input_ids"], b["attention_mask"], b["score_index"]), b["labels"])
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    grad_ok = bool(torch.isfinite(built.model.prompt.weight.grad).all())
    return {"size_b": size, "params": params, "step_s": elapsed, "grad_finite": grad_ok,
            "grad_dtype": str(built.model.prompt.weight.grad.dtype), "quantization": quantization,
            "load_peak_rss_gib": loaded_peak, "anon_rss_gib": _gib(status_mib("RssAnon")),
            "peak_rss_gib": peak_rss_mib() / 1024,
            "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def _gib(mib: float | None) -> float | None:
    return None if mib is None else mib / 1024


def _logical_numel(p) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight holds two per byte."""
    return p.numel() * 2 if type(p).__name__ == "Params4bit" else p.numel()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.5,1,3,5")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="random checkpoints for --quantization")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: bf16 weights on the GPU")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.seq, args.batch, args.checkpointing, args.quantization,
                                  args.workdir, args.device)))
        return
    compute = "bf16 on cuda" if args.device == "cuda" else "fp32 compute"
    print(f"random-init Llama-style decoders (capacity only), {compute}, weights {args.quantization}, batch "
          f"{args.batch} x ~{args.seq} tokens, prompt 20, checkpointing={args.checkpointing}")
    for size in [float(s) for s in args.sizes.split(",")]:
        if args.quantization != "none":
            t0 = time.perf_counter()
            write_random_checkpoint(size, Path(args.workdir) / f"random-llama-{size}B")
            print(f"{size:>4}B random checkpoint ready ({time.perf_counter() - t0:.0f}s)", flush=True)
        cmd = [sys.executable, "-m", "bench.capacity", "--one", str(size), "--seq", str(args.seq),
               "--batch", str(args.batch), "--quantization", args.quantization, "--workdir", args.workdir,
               "--device", args.device]
        cmd += ["--checkpointing"] if args.checkpointing else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
        if line.startswith("{"):
            r = json.loads(line)
            anon = f" anon_rss_after_step={r['anon_rss_gib']:.1f}GiB" if r["anon_rss_gib"] else ""
            anon += f" gpu_peak={r['gpu_peak_gib']:.1f}GiB" if r.get("gpu_peak_gib") is not None else ""
            print(f"{size:>4}B params={r['params'] / 1e9:.2f}B peak_rss={r['peak_rss_gib']:.1f}GiB "
                  f"(loading {r['load_peak_rss_gib']:.1f}GiB){anon} "
                  f"step={r['step_s']:.1f}s grad_finite={r['grad_finite']} grad_dtype={r['grad_dtype']} ok",
                  flush=True)
        else:
            why = ("killed: out of memory" if proc.returncode in (-9, 137)
                   else proc.stderr.strip().splitlines()[-1:])
            print(f"{size:>4}B failed (exit {proc.returncode}: {why})")


if __name__ == "__main__":
    main()
