"""The TPT recipe (`ds-prompt transfer speedup`; REFERENCE §1): does a transferred initialization train faster
than a random one? Two prompt-tuning runs with the same seed, data, schedule and step budget, one from the
config's init and one from a transferred prompt (`file:PROMPT`, a prompt path, or `library:best`); the
measurements (curves, steps to the random run's final accuracy, FLOPs) are transfer.speedup's."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ds_prompt import dist
from ds_prompt.artifacts import load_prompt_tensor
from ds_prompt.builders import load_model_for
from ds_prompt.config import InitSpec, TrainConfig, build_config, load_config_file, model_slug
from ds_prompt.errors import UserError
from ds_prompt.io import write_json
from ds_prompt.recipes.prompt_tuning import train
from ds_prompt.transfer.library_index import resolve_library_init
from ds_prompt.transfer.plots import learning_curves
from ds_prompt.transfer.speedup import learning_curve, matmul_params, steps_to_reach

RUNS = ("random", "transfer")


def transfer_init_spec(init: str, task: str, model: str) -> str:
    """`--init` spec of the transfer run: file:PATH for a path, library specs resolved for (task, model)."""
    kind = init.partition(":")[0]
    if kind == "library":
        return "file:" + resolve_library_init(InitSpec.parse(init), task=task, model=model)
    if kind == "file":
        return str(InitSpec.parse(init))
    if ":" in init and not Path(init).exists():
        raise UserError(f"--init '{init}' is not a transferred prompt: pass a prompt path, file:PATH or library:best")
    return "file:" + init


def transfer_speedup(cfg: TrainConfig, init: str) -> dict:
    """Train from `cfg.init` and from `init` (same seed/budget) under <output_dir>/{random,transfer}; write
    speedup.json and speedup.png into <output_dir>. Returns the summary."""
    out = Path(cfg.output_dir or Path("runs") / f"speedup-{cfg.task}-{model_slug(cfg.model)}")
    base = dataclasses.replace(cfg, resume=False, overwrite=True, save_every=0,
                               eval_every=cfg.eval_every or max(1, cfg.max_steps // 20))
    inits = {"random": cfg.init, "transfer": transfer_init_spec(init, cfg.task, cfg.model)}
    metrics = {run: train(dataclasses.replace(base, output_dir=str(out / run), init=inits[run])) for run in RUNS}
    curves = {run: learning_curve(m) for run, m in metrics.items()}
    target = metrics["random"]["accuracy"]
    steps = {run: steps_to_reach(curves[run], target) for run in RUNS}
    n_params = matmul_params(load_model_for(cfg.model, cfg.family, cfg.dtype).model)
    flops_per_step = {run: 4 * n_params * m["tokens"] / max(m["steps"], 1) for run, m in metrics.items()}
    summary = {
        "task": cfg.task, "model": cfg.model, "max_steps": cfg.max_steps, "eval_every": base.eval_every,
        "seed": cfg.seed, "init": inits, "target_accuracy": target,
        "final_accuracy": {run: m["accuracy"] for run, m in metrics.items()},
        "accuracy_at_init": {run: m["accuracy_before"] for run, m in metrics.items()},
        "steps_to_target": steps,
        "flops_to_target": {run: (steps[run] * flops_per_step[run] if steps[run] is not None else None)
                            for run in RUNS},
        "speedup": (steps["random"] / steps["transfer"]) if steps["transfer"] else None,
        "curves": {run: [list(p) for p in c] for run, c in curves.items()},
    }
    dist.on_rank0(write_json, out / "speedup.json", summary)
    dist.on_rank0(learning_curves, curves, out / "speedup.png", target, f"{cfg.task} on {cfg.model}: random vs "
                  f"transferred init")
    return summary


def speedup_config(prompt: str, config: str | None = None, **flags) -> tuple[TrainConfig, str]:
    """(TrainConfig, transfer init spec) from CLI flags; --prompt_length defaults to the transferred prompt's."""
    cfg = build_config(TrainConfig, config, **flags)
    spec = transfer_init_spec(prompt, cfg.task, cfg.model)
    if "prompt_length" not in flags and "prompt_length" not in (load_config_file(config) if config else {}):
        cfg = dataclasses.replace(cfg, prompt_length=load_prompt_tensor(InitSpec.parse(spec).arg).shape[0])
    return cfg, spec
