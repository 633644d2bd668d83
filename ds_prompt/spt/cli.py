"""`ds-prompt spt <train|evaluate|inspect>`: thin entry points for SPT (memory-bank prompt retrieval).

Merged into `ds-prompt` by ds_prompt.cli. Runs under the DeepSpeed launcher too:
`deepspeed --num_gpus N --module ds_prompt.cli spt train ...`.
"""
from __future__ import annotations

from ds_prompt import dist
from ds_prompt.errors import UserError


def _names(value, flag: str) -> str | None:
    """A task list as 'a,b' (fire turns `--tasks a,b` into a tuple; a YAML/JSON config may hold a list)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise UserError(f"--{flag} {value!r} is not a list of task names: pass e.g. --{flag} sst2,rte")


def _name_list(value, flag: str) -> list[str] | None:
    joined = _names(value, flag)
    return [n.strip() for n in joined.split(",") if n.strip()] if joined else None


def train(config: str | None = None, **flags) -> None:
    """Multitask prompted training of an SPT memory bank (our documented reading of Bari et al. 2022).

    Example: ds-prompt spt train --model minilm --tasks sst2,rte,qnli,mrpc,agnews --heldout mr,snli
             --data_dir ../shared/data --output_dir runs/spt --max_steps 500
    Tasks: --tasks A,B (trained on) --heldout X,Y (zero-shot: their discrete prompts retrieve from the bank)
      --data_dir --train_limit N --eval_limit N (per task) --eval_seen --mixing temperature|proportional
      --mixing_temperature T --mixing_cap K
    Mode: --mode spt (bank + task prompts) | shared (baseline: one prompt of the same length for all tasks)
      | untrained (baseline: evaluate the initialization)
    Bank: --bank_size N --memory_length l --top_k k --similarity cosine|dot --combine weighted|concat
      --pooling mean|max --temperature T (0 = auto) --query_source instruction|instruction+input
      --instruction_in_input (also put the row's discrete prompt before its text in the model input, T0-style)
      --query_projection none|mlp --task_prompt per_task|shared|none --task_prompt_length L
      --unseen_prompt mean|memory_only --init normal[:std]|uniform|vocab|text:WORDS --key_init instructions|normal
      --init_bank DIR (start from a trained bank: pretrain-then-tune protocol) --freeze_bank
    Training: --model --max_steps --batch_size (global) --grad_accum --lr --train_backbone --backbone_lr --seed
      --deepspeed CONFIG --family --head auto|label_words|similarity|linear --dtype --max_length --optimizer
      --scheduler --warmup_steps --grad_clip --weight_decay --eval_every --save_every --log_every --resume
      --progress; --config FILE (JSON/YAML) for defaults.
    Writes bank.safetensors, bank.json, metrics.json, spt_eval.json, tb/, checkpoints/ under --output_dir and
    prints per-task accuracy. See docs/spt.md.
    """
    from ds_prompt.config import build_config, load_config_file
    from ds_prompt.recipes.spt import SPTConfig, format_table
    from ds_prompt.recipes.spt import train as run
    values = load_config_file(config) if config else {}
    values.update({k: v for k, v in flags.items() if v is not None})  # flags win over the file
    for flag in ("tasks", "heldout"):
        if flag in values:
            values[flag] = _names(values[flag], flag)
    cfg = build_config(SPTConfig, None, **values)
    metrics = run(cfg)
    dist.on_rank0(print, format_table(metrics["results"]))
    dist.on_rank0(print, f"{metrics['mode']}: held-out mean {_fmt(metrics['heldout_mean'])}, seen mean "
                         f"{_fmt(metrics['seen_mean'])} after {metrics['steps']} steps; bank at "
                         f"{cfg.resolved_output_dir()}")


def evaluate(bank: str, tasks=None, data_dir: str | None = None, limit: int | None = 500, batch_size: int = 64,
             output_dir: str | None = None, model: str | None = None, dtype: str = "auto") -> None:
    """Accuracy of a trained SPT bank per task: zero-shot for tasks it was not trained on.

    --bank the --output_dir of `ds-prompt spt train`; --tasks A,B (default: the bank's held-out tasks);
    --data_dir --limit N (eval examples per task) --batch_size --model (override the recorded backbone) --dtype.
    A task's accuracy is the mean over its discrete prompts. Prints a table and writes spt_eval.json into
    --output_dir (default: the bank folder).
    """
    from ds_prompt.recipes.spt import evaluate_bank, format_table
    record = evaluate_bank(bank, _name_list(tasks, "tasks"), data_dir, limit, batch_size, output_dir, model, dtype)
    dist.on_rank0(print, format_table(record["results"]))
    dist.on_rank0(print, f"held-out mean {_fmt(record['heldout_mean'])}, seen mean {_fmt(record['seen_mean'])}")


def inspect(bank: str, tasks=None, output: str | None = None, data_dir: str | None = None, limit: int = 32,
            dtype: str = "auto") -> None:
    """Heatmap (PNG) of which memory slots each task's discrete prompts retrieve from a trained bank.

    --bank the --output_dir of `ds-prompt spt train`; --tasks A,B (default: the bank's seen and held-out
    tasks); --output PNG (default <bank>/retrieval.png; the numbers go to retrieval.json beside it);
    --data_dir --limit N: examples per task, needed only for banks trained with --query_source
    instruction+input.
    """
    from ds_prompt.spt.inspect import inspect_bank
    record = inspect_bank(bank, _name_list(tasks, "tasks"), output, data_dir, limit, dtype)
    print(f"wrote {record['png']} ({len(record['rows'])} prompts x {record['slots']} slots)")


def export(bank: str, output_dir: str, tasks=None, format: str = "prompt", instruction: int = 0,
           model: str | None = None, dtype: str = "auto") -> None:
    """Export a trained bank per task: the retrieved-and-combined prompt of each task's discrete prompt
    --instruction K (default 0) as a plain prompt artifact (--format prompt, usable by evaluate, predict,
    generate and `train --init file:`) or a PEFT adapter (--format peft), in <output_dir>/<task>/.

    --bank the --output_dir of `ds-prompt spt train`; --tasks A,B (default: its seen and held-out tasks).
    Needs a bank trained with --query_source instruction (one prompt per task). The bank folder itself
    (bank.safetensors + bank.json) holds the whole bank and its retrieval config.
    """
    from ds_prompt.spt.export import export_bank
    rows = export_bank(bank, _name_list(tasks, "tasks"), output_dir, format, instruction, model, dtype)
    for r in rows:
        dist.on_rank0(print, f"{r['task']}: {r['prompt_length']} vectors (discrete prompt {r['instruction']}) -> "
                             f"{r['path']}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


COMMANDS = {"spt": {"train": train, "evaluate": evaluate, "inspect": inspect, "export": export}}
