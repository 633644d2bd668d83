"""`ds-prompt <subcommand>`: thin entry points; each parses flags into a config and calls one library function.

Runs the same under the DeepSpeed launcher: `deepspeed --num_gpus N --module ds_prompt.cli train ...`
(the launcher's --local_rank flag is accepted and ignored; ranks come from the environment).
"""
from __future__ import annotations

import os
import sys

from ds_prompt.errors import UserError


def train(config: str | None = None, **flags) -> dict:
    """Prompt-tune a frozen model on a task.

    With no flags: the packaged all-MiniLM-L6-v2 on the bundled demo task, output under runs/. Every flag is a
    field of ds_prompt.config.TrainConfig (listed below); --config FILE (JSON/YAML) gives defaults that flags
    override. Writes prompt.safetensors, prompt.json, metrics.json, run.json, tb/ and checkpoints/ under
    --output_dir.
    """
    from ds_prompt.config import TrainConfig, build_config
    from ds_prompt.recipes.prompt_tuning import train as run
    cfg = build_config(TrainConfig, config, keep_none=True, **flags)
    metrics = run(cfg)
    _print_rank0(f"accuracy {metrics['accuracy_before']:.4f} -> {metrics['accuracy']:.4f} after "
                 f"{metrics['steps']} steps; prompt at {cfg.resolved_output_dir()}")
    return None


def evaluate(prompt: str, task: str | None = None, data_dir: str | None = None, model: str | None = None,
             split: str = "eval", limit: int | None = None, batch_size: int = 64, output_dir: str | None = None,
             family: str | None = None, dtype: str = "auto", max_length: int | None = None,
             seed: int | None = None, quantization: str | None = None) -> None:
    """Accuracy of a trained prompt on a task's eval split (default: the task it was trained on).

    --prompt a prompt folder / prompt.safetensors / PEFT adapter; --model overrides the backbone recorded in
    prompt.json. --limit N scores a seeded subset chosen by --seed (default: the prompt's training seed), the
    same rule as training's --eval_limit, so `train --eval_limit N` and `evaluate --limit N` score the same
    examples. --data_dir and --quantization default to what the run recorded in prompt.json. Prints the
    accuracy and writes eval_<task>.json (accuracy, f1, matthews, the subset rule) into --output_dir (default:
    the prompt's folder).
    """
    from ds_prompt.recipes.inference import evaluate_prompt
    result = evaluate_prompt(prompt, task=task, data_dir=data_dir, model=model, split=split, limit=limit,
                             batch_size=batch_size, output_dir=output_dir, family=family, dtype=dtype,
                             max_length=max_length, seed=seed, quantization=quantization)
    _print_rank0(f"{result['task']}: accuracy {result['accuracy']:.4f} on {result['n']} examples")


def predict(prompt: str, output: str, task: str | None = None, split: str = "eval", input: str | None = None,
            data_dir: str | None = None, model: str | None = None, limit: int | None = None, batch_size: int = 64,
            dtype: str = "auto", quantization: str | None = None, seed: int | None = None) -> None:
    """Write predictions of a trained prompt: one JSON line per example with its id, texts, gold label (null
    when unknown), predicted label and class probabilities.

    --prompt P --output preds.jsonl; examples from --task's --split (default: the prompt's task, eval split;
    --limit N: the seeded subset rule of `evaluate`) or from --input FILE (.jsonl/.json/.csv/.tsv/.parquet
    with the task's text fields; label and id optional). --data_dir and --quantization default to what the run
    recorded.
    """
    from ds_prompt.recipes.inference import predict as run
    r = run(prompt, output, task=task, split=split, input=input, data_dir=data_dir, model=model, limit=limit,
            batch_size=batch_size, dtype=dtype, quantization=quantization, seed=seed)
    shown = f"; accuracy {r['accuracy']:.4f} on the {r['labeled']} labeled" if r["accuracy"] is not None else ""
    _print_rank0(f"{r['task']}: wrote {r['n']} predictions to {r['output']}{shown}")


def generate(prompt: str, text: str | None = None, input: str | None = None, output: str | None = None,
             model: str | None = None, max_new_tokens: int = 32, dtype: str = "auto",
             quantization: str | None = None) -> None:
    """Generate text (greedy) from a causal or seq2seq backbone with a trained soft prompt prepended.

    --prompt P and --text "..." (printed), or --input FILE (one text per line; .jsonl lines may be objects with
    a "text" field) with --output FILE.jsonl ({text, generated} per line). --max_new_tokens N (default 32).
    """
    from ds_prompt.data.loading import read_texts
    from ds_prompt.io import write_jsonl
    from ds_prompt.recipes.inference import generate_texts
    if (text is None) == (input is None):
        raise UserError("generate needs exactly one of --text \"...\" and --input FILE")
    texts = read_texts(input) if input is not None else [str(text)]
    if input is not None and not output:
        raise UserError("generate --input needs --output FILE.jsonl")
    results = generate_texts(prompt, texts, model=model, max_new_tokens=max_new_tokens, dtype=dtype,
                             quantization=quantization)
    if output:
        write_jsonl(output, ({"text": r["text"], "generated": r["generated"]} for r in results))
        _print_rank0(f"wrote {len(results)} generations to {output}")
    else:
        _print_rank0(results[0]["generated"])


def export(prompt: str, format: str = "peft", output_dir: str | None = None) -> None:
    """Export a trained prompt: --format peft writes adapter_config.json + adapter_model.safetensors."""
    from ds_prompt.artifacts import export_peft, load_prompt
    if format != "peft":
        raise UserError(f"unknown --format '{format}': only peft is supported")
    if not output_dir:
        raise UserError("export needs --output_dir D")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file: pass a folder for the adapter")
    tensor, meta, _ = load_prompt(prompt)
    export_peft(tensor, meta, output_dir)
    print(f"wrote PEFT prompt-tuning adapter to {output_dir}")


def _print_rank0(text: str, file=None) -> None:
    """Print on global rank 0 only (under torchrun/deepspeed every rank reaches the same line)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(text, file=file or sys.stdout, flush=True)


COMMANDS = {"train": train, "evaluate": evaluate, "predict": predict, "generate": generate, "export": export}


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop --local_rank=N / --local_rank N that the deepspeed launcher appends."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank"):
            skip = a == "--local_rank"
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    import signal

    import fire

    from ds_prompt.cli_args import check_argv, help_text
    from ds_prompt.engine.progress import Terminated, interruption_message, on_sigterm, reset
    reset()
    argv = _strip_launcher_args(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    previous = None
    if _main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
        # A parent may hand down a mask blocking these (the mask survives exec): Ctrl-C and SIGTERM must reach us.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if any(a in ("--help", "-h") for a in argv):  # generated from the signatures and config fields
            _print_rank0(help_text(commands, argv))
            return 0
        check_argv(commands, argv)  # every flag, before anything runs
        fire.Fire(commands, command=argv, name="ds-prompt")
    except fire.core.FireExit as exc:  # --help, or a usage error fire already reported
        return exc.code
    except UserError as exc:
        _print_rank0(f"ds-prompt: error: {exc}", sys.stderr)
        _let_rank0_speak_first(str(exc))
        return 2
    except KeyboardInterrupt:
        _print_rank0(f"ds-prompt: {interruption_message()}", sys.stderr)
        return 130
    except Terminated:
        _print_rank0(f"ds-prompt: {interruption_message()} (SIGTERM)", sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _let_rank0_speak_first(message: str, wait_s: float = 5.0) -> None:
    """Under a launcher every rank meets a collective error; if another rank exited first, the launcher would
    kill rank 0 before it printed. Other ranks linger (killable silently) while rank 0 prints and exits; a rank
    still alive afterwards met an error of its own, and says it."""
    import signal
    import time
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if _main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(wait_s)
        print(f"ds-prompt: error (rank {rank}): {message}", file=sys.stderr, flush=True)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _commands() -> dict:
    """Every command: the core ones here and the recipe groups (an import error in a group is a bug, and
    surfaces as one: the group never silently disappears)."""
    from ds_prompt.fpt.cli import COMMANDS as FPT
    from ds_prompt.spt.cli import COMMANDS as SPT
    from ds_prompt.transfer.cli import COMMANDS as TRANSFER
    return {**COMMANDS, **TRANSFER, **FPT, **SPT}


if __name__ == "__main__":
    sys.exit(main())
