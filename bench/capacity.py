"""Largest frozen model that trains a prompt on this machine: one prompt-tuning step per model size.

    python -m bench.capacity --sizes 0.5,1,3,5 [--checkpointing] [--seq 64] [--batch 2]

Random-init Llama-style decoders (capacity only: the weights are random, stated in the output), fp32 on CPU.
Each size runs in a fresh subprocess (so peak memory does not accumulate): build on the meta device, fill with
N(0, 0.02), wrap in ds_prompt's PromptedModel (20-token prompt, label-word head), one forward + backward +
AdamW step on the prompt. Prints one line per size: params, peak RSS (GiB), seconds for the step, ok/failed.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# (hidden, layers, heads, kv_heads, ffn) roughly at the named parameter counts (billions), vocab 30522
SHAPES = {0.5: (1024, 24, 16, 8, 4096), 1: (2048, 16, 16, 8, 5632), 3: (2560, 32, 20, 4, 8960),
          5: (3584, 28, 28, 4, 11008), 7: (4096, 32, 32, 8, 14336)}


def one_size(size: float, seq: int, batch: int, checkpointing: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from ds_prompt.builders import build_prompted
    from ds_prompt.data.encoding import collate
    from ds_prompt.data.loading import load_examples
    from ds_prompt.data.tasks import get_task
    from ds_prompt.models.backbone import Backbone, freeze
    from ds_prompt.models.checkpointing import enable_activation_checkpointing
    from ds_prompt.models.family import Family
    from ds_prompt.models.tiny import tiny_tokenizer
    hidden, layers, heads, kv, ffn = SHAPES[size]
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=512, pad_token_id=0,
                         bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)  # its inv_freq buffer was built on meta
    params = sum(p.numel() for p in model.parameters())
    bb = Backbone(freeze(model), tok, Family.CAUSAL, f"random-llama-{size}B")
    if checkpointing:
        enable_activation_checkpointing(model)
    built = build_prompted(bb, get_task("demo"), 20, seq + 20, "label_words", "normal:0.02", 0)
    examples = load_examples(get_task("demo"), "train", None, limit=batch)
    b = collate([built.encoder.encode(e) for e in examples], tok.pad_token_id, True)
    opt = torch.optim.AdamW([built.model.prompt.weight], lr=1e-3)
    t0 = time.perf_counter()
    loss = F.cross_entropy(built.model(b["input_ids"], b["attention_mask"], b["score_index"]), b["labels"])
    loss.backward()
    opt.step()
    elapsed = time.perf_counter() - t0
    grad_ok = bool(torch.isfinite(built.model.prompt.weight.grad).all())
    return {"size_b": size, "params": params, "step_s": elapsed, "grad_finite": grad_ok,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.5,1,3,5")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.seq, args.batch, args.checkpointing)))
        return
    print(f"random-init Llama-style decoders (capacity only), fp32, batch {args.batch} x ~{args.seq} tokens, "
          f"prompt 20, checkpointing={args.checkpointing}")
    for size in [float(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, "-m", "bench.capacity", "--one", str(size), "--seq", str(args.seq),
               "--batch", str(args.batch)] + (["--checkpointing"] if args.checkpointing else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
        if line.startswith("{"):
            r = json.loads(line)
            print(f"{size:>4}B params={r['params'] / 1e9:.2f}B peak_rss={r['peak_rss_gib']:.1f}GiB "
                  f"step={r['step_s']:.1f}s grad_finite={r['grad_finite']} ok")
        else:
            print(f"{size:>4}B failed (exit {proc.returncode}: {'killed: out of memory' if proc.returncode in (-9, 137) else proc.stderr.strip().splitlines()[-1:]})")


if __name__ == "__main__":
    main()
