"""The CLI path (`ds-prompt train`) against the engine path (`bench.peft_compare`'s ds_prompt system) on one model.

    python -m bench.train_overhead --model smollm2 --task sst2 --data_dir ../shared/data --steps 40
    python -m bench.train_overhead --quick            # tiny random Llama on the bundled demo task

The engine path is the bare training step (collate, DeepSpeed forward/backward/step). The CLI path is the full
`ds-prompt train` loop as users run it: data loading and encoding, length-bucketed batches, the progress bar,
TensorBoard, the loss/grad-norm windows and trainable-state checkpoints every `--save_every` steps (its
evaluations are switched off: they are work, not overhead). Both run in this process, on the same model,
batch size, prompt length and max length, alternating: engine for half the steps, the CLI for all of them,
the engine for the other half, so drift in the machine's speed hits both alike.

The CLI path's time is the sum of its logged windows (`train/s_per_step` x steps per window, read back from its
TensorBoard events), i.e. its training loop from the first step to the last, checkpoints and logging
included; its tokens are metrics.json's. Prints `engine tokens/s=`, `cli tokens/s=` and, last,
`cli_vs_engine_ratio=<cli/engine>` (1.0 = no overhead; the README goal is >= 0.97).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli_window_seconds(tb_dir: str) -> tuple[float, int]:
    """(seconds, steps) of a run's training windows from its TensorBoard scalars train/s_per_step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/s_per_step")
    seconds, last = 0.0, 0
    for e in events:
        seconds += e.value * (e.step - last)
        last = e.step
    return seconds, last


def engine_steps(system, batches) -> tuple[float, float]:
    """(tokens, seconds) of `batches` through the bench's engine-path step."""
    t0, tokens = time.perf_counter(), 0.0
    for idx in batches:
        tokens += system.step(idx)
    return tokens, time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llama", help="what `ds-prompt train --model` takes")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--prompt_length", type=int, default=20)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--save_every", type=int, default=25, help="the CLI path's checkpoint cadence")
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 steps: the contract test")
    parser.add_argument("--output_dir", default=None, help="the CLI run's folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.task, args.data_dir, args.steps, args.save_every, args.log_every = \
            "tiny:llama", "demo", None, 8, 4, 2
    import torch

    from bench.peft_compare import _data, prepare_ds_prompt
    from ds_prompt.config import TrainConfig
    from ds_prompt.models.backbone import load_backbone
    from ds_prompt.recipes.prompt_tuning import train

    bb = load_backbone(args.model, dtype="fp32")
    task, train_examples, evals = _data(args.task, args.data_dir, 400, 16, args.seed)
    bench_args = SimpleNamespace(prompt_length=args.prompt_length, max_length=args.max_length, seed=args.seed,
                                 batch_size=args.batch_size, steps=args.steps, lr=args.lr, shortcuts="on",
                                 dtype="fp32")
    engine = prepare_ds_prompt(bb.model, bb.tokenizer, bb.family.value, task, train_examples, evals, bench_args)
    # Warm-up outside the timing, as the CLI's windows start after its first evaluation: an evaluation (every
    # eval length) and one step.
    engine.evaluate()
    engine.step(engine.batches[0])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model={args.model} task={args.task} steps={args.steps} batch={args.batch_size} "
          f"prompt={args.prompt_length} max_length={args.max_length} save_every={args.save_every} "
          f"threads={torch.get_num_threads()} load_before={load:.1f}")
    half = 1 + args.steps // 2
    tokens_a, seconds_a = engine_steps(engine, engine.batches[1:half])
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or os.path.join(tmp, "cli")
        train(TrainConfig(model=args.model, task=args.task, data_dir=args.data_dir, output_dir=out,
                          max_steps=args.steps, batch_size=args.batch_size, prompt_length=args.prompt_length,
                          max_length=args.max_length, lr=args.lr, seed=args.seed, eval_every=0, eval_limit=16,
                          train_limit=400, save_every=args.save_every, log_every=args.log_every, overwrite=True))
        cli_seconds, cli_steps = cli_window_seconds(os.path.join(out, "tb"))
        with open(os.path.join(out, "metrics.json")) as f:
            cli_tokens = json.load(f)["tokens"]
    tokens_b, seconds_b = engine_steps(engine, engine.batches[half:args.steps + 1])
    engine_tps = (tokens_a + tokens_b) / (seconds_a + seconds_b)
    cli_tps = cli_tokens / cli_seconds
    ratio = cli_tps / engine_tps
    print(f"engine tokens/s={engine_tps:.1f} steps={args.steps}")
    print(f"cli    tokens/s={cli_tps:.1f} steps={cli_steps} window_seconds={cli_seconds:.5f}")
    print(f"cli_vs_engine_ratio={ratio:.3f}")
    return {"engine_tokens_per_s": engine_tps, "cli_tokens_per_s": cli_tps, "ratio": ratio, "cli_steps": cli_steps}


if __name__ == "__main__":
    main()
