"""`ds-prompt transfer matrix|speedup|indicators|projector|library ...`: prompt transferability (Su et al.
2022) subcommands (the older top-level `indicators`, `projector`, `library` spellings still work).

Thin entry points: each parses its flags and calls one function of ds_prompt.transfer. Lists are comma
separated (--prompts runs/sst2,runs/mr --tasks sst2,mr,rte). Merged into `ds-prompt` by ds_prompt.cli.
"""
from __future__ import annotations

from ds_prompt import dist
from ds_prompt.errors import UserError


def _say(text: str) -> None:
    dist.on_rank0(print, text)


def _table(rows: list[dict], columns) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(str(c)), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
    return "\n".join(lines + ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body])


def _position(position) -> int | str | None:
    if position == "score":
        return position
    if position in (None, "all", "None"):
        return None
    try:
        return int(position)
    except (TypeError, ValueError):
        raise UserError(f"--position {position!r} must be score (the family's scoring position), a token index "
                        f"(0 = first prompt token) or all") from None


def matrix(prompts, tasks=None, data_dir: str | None = None, output_dir: str = "runs/transfer_matrix",
           model: str | None = None, limit: int | None = None, batch_size: int = 64, max_length: int | None = None,
           random_baseline: bool = True, seed: int = 0, dtype: str = "auto") -> None:
    """Zero-shot cross-task transfer: every prompt evaluated on every task, with the target task's label words
    (or label descriptions for embedding-only encoders).

    --prompts P1,P2,... or a folder of prompt artifacts; --tasks T1,T2,... (default: the prompts' own tasks);
    --model overrides the recorded backbone; --limit caps eval examples per task. Writes
    <output_dir>/matrix.csv (source,target,accuracy; source 'random' = an N(0, 0.02) prompt) and matrix.png.
    """
    from ds_prompt.transfer.matrix import run_transfer_matrix
    rows = run_transfer_matrix(prompts, tasks, output_dir, data_dir=data_dir, model=model, limit=limit,
                               batch_size=batch_size, max_length=max_length, random_baseline=random_baseline,
                               seed=seed, dtype=dtype)
    _say(_table(rows, ("source", "target", "accuracy")) + f"\nwrote {output_dir}/matrix.csv and matrix.png")


def speedup(prompt: str, config: str | None = None, **flags) -> None:
    """Transferred-init prompt tuning (TPT) vs random init, same seed and step budget.

    --prompt a transferred prompt for this model (a folder, file:PATH or library:best); every `ds-prompt train`
    flag applies to both runs (--model --task --data_dir --max_steps --lr --eval_every ...; --init is the random
    run's init; --prompt_length defaults to the transferred prompt's). Writes <output_dir>/{random,transfer}/,
    speedup.json (steps and FLOPs to reach the random run's final accuracy) and speedup.png (learning curves).
    """
    from ds_prompt.recipes.tpt import speedup_config, transfer_speedup
    cfg, spec = speedup_config(prompt, config, **flags)
    s = transfer_speedup(cfg, spec)
    _say(f"target accuracy {s['target_accuracy']:.4f} (random init, {cfg.max_steps} steps); steps to reach it: "
         f"random {s['steps_to_target']['random']}, transfer {s['steps_to_target']['transfer']}; "
         f"speedup {s['speedup']}")


def indicators(prompts, metric="all", output_dir: str = "runs/indicators", model: str | None = None,
               against: str | None = None, task: str | None = None, data_dir: str | None = None, samples: int = 0,
               position="score", ffn_part: str = "decoder", window: int = 3, deepspeed: str | None = None,
               dtype: str = "auto", include_self: bool = False, neuron: str = "product") -> None:
    """Transferability indicators between every pair of prompts: cos, cos_token, euc, euc_token, on (REFERENCE §1).

    --metric all | a comma list. ON feeds [prompt; bos] to the frozen model (--model, default the prompts'
    backbone), or [prompt; task text] for --samples N examples of --task; --position score (default: the mask
    slot / last token / first decoder step, which has seen the whole prompt), k (token k, 0 = first prompt
    token) or all; --neuron product (gated FFNs: act(gate)*up, default) or gate (gate > 0);
    --ffn_part decoder|encoder|both for T5; --window for layer windows;
    --deepspeed zero3_cpu partitions the model (launch with deepspeed/torchrun). Writes indicators.csv
    (source,target,metric,value) and on_windows.csv; with --against matrix.csv also correlation.csv (Spearman of
    each indicator with transfer accuracy over task pairs; --include_self keeps source == target pairs).
    """
    from ds_prompt.transfer.indicators import NeuronProbe, compute_indicators
    probe = NeuronProbe(task=task, data_dir=data_dir, samples=int(samples), position=_position(position),
                        seq2seq_part=ffn_part, neuron=neuron)
    result = compute_indicators(prompts, metric, output_dir, model, against, probe, int(window), deepspeed, dtype,
                                include_self)
    if "correlation" in result:
        _say(_table(result["correlation"], ("metric", "spearman", "p_value", "n", "mean_per_target")))
    _say(f"wrote {len(result['indicators'])} rows to {output_dir}/indicators.csv")


def projector_train(config: str | None = None, **flags) -> None:
    """Train a cross-model prompt projector through the frozen target model with the target task loss.

    --source_model A (checked against the prompts) --target_model B --prompts P1,P2 (source prompts)
    --tasks T1,T2 (prompt i is projected for task i; default their own tasks) --data_dir --max_steps
    --batch_size --lr 5e-3 --eps 1e-6 --hidden 768 --activation leaky_relu|tanh --target_length (default the
    source length) --head --deepspeed CONFIG --output_dir. Trains through the shared step loop: checkpoints every
    --save_every steps, and re-running an interrupted run resumes it (--overwrite starts over). Writes
    projector.safetensors + projector.json, run.json, tb/ and checkpoints/.
    """
    from ds_prompt.config import build_config
    from ds_prompt.recipes.projector import ProjectorTrainConfig, train_projector
    from ds_prompt.transfer.prompt_set import as_list
    for key in ("prompts", "tasks"):
        if key in flags:
            flags[key] = ",".join(as_list(flags[key]))
    metrics = train_projector(build_config(ProjectorTrainConfig, config, **flags))
    for before, after in zip(metrics["before"], metrics["after"]):
        _say(f"{after['task']}: accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}")
    _say(f"projector at {metrics['output_dir']}")


def projector_apply(projector: str, prompt: str, output_dir: str, task: str | None = None) -> None:
    """Map a source-model prompt to the projector's target model; write a prompt artifact to --output_dir that
    `ds-prompt evaluate` and `train --init file:` accept (--task: the task to record, default the prompt's)."""
    from ds_prompt.transfer.projector import apply_projector
    path = apply_projector(projector, prompt, output_dir, task)
    _say(f"wrote the projected prompt to {path}")


def library_add(prompt, library: str | None = None, name: str | None = None, overwrite: bool = False) -> None:
    """Add prompt artifacts (--prompt P or P1,P2,...) to the library (--library DIR, default $DS_PROMPT_LIBRARY
    or ./prompt_library); --name names a single entry (default: its task)."""
    from ds_prompt.transfer.library_index import add_to_library
    from ds_prompt.transfer.prompt_set import prompt_paths
    paths = prompt_paths(prompt)
    if name and len(paths) > 1:
        raise UserError(f"--name {name} names one entry but {len(paths)} prompts were given: add them one by one")
    for path in paths:
        entry = add_to_library(path, library, name, overwrite)
        _say(f"added {entry['name']} ({entry['task']}, {entry['backbone']}, {entry['prompt_length']}x"
             f"{entry['d_model']})")


def library_list(library: str | None = None, task: str | None = None, model: str | None = None) -> None:
    """List library entries (optionally of one --task / --model)."""
    from ds_prompt.transfer.library_index import library_entries
    rows = library_entries(library, task, model)
    _say(_table(rows, ("name", "task", "backbone", "prompt_length", "d_model", "accuracy")) if rows
         else "the library is empty")


def library_recommend(task: str, model: str, library: str | None = None, metric: str = "on",
                      probe_dir: str | None = None, samples: int = 0, position="score", deepspeed: str | None = None,
                      dtype: str = "auto", **train_flags) -> None:
    """Rank the library's prompts for --model by --metric (on, cos, cos_token, euc, euc_token) against a short
    probe prompt trained on --task; `train --init library:best` then starts from the top one.

    Probe-run flags are `ds-prompt train` flags (--data_dir --max_steps 50 --lr ...); the probe is cached under
    <library>/probes/ (or --probe_dir). --samples/--position as in `ds-prompt transfer indicators`.
    """
    from ds_prompt.recipes.library import recommend
    from ds_prompt.transfer.indicators import NeuronProbe
    probe = NeuronProbe(task=task if int(samples) else None, data_dir=train_flags.get("data_dir"),
                        samples=int(samples), position=_position(position))
    ranking = recommend(task, model, library, metric, probe_dir, probe, deepspeed, dtype, **train_flags)
    columns = ("rank", "name", "task", *[m for m in ("on", "cos", "cos_token", "euc", "euc_token")
                                         if any(m in r for r in ranking)])
    _say(_table(ranking, columns))


TRANSFER = {
    "matrix": matrix, "speedup": speedup, "indicators": indicators,
    "projector": {"train": projector_train, "apply": projector_apply},
    "library": {"add": library_add, "list": library_list, "recommend": library_recommend},
}
# Every transferability command lives under `ds-prompt transfer`; the former top-level spellings still work
# (hidden from the listing, see cli_args.HIDDEN).
COMMANDS = {"transfer": TRANSFER, "indicators": indicators, "projector": TRANSFER["projector"],
            "library": TRANSFER["library"]}
