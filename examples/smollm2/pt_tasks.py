"""Prompt tuning per task on SmolLM2-135M: untrained -> trained accuracy (label words, last position).

8 tasks; 3 seeds for sst2, agnews and qnli (mean and standard error), 1 for the others. Validation sets
capped at EVAL_LIMIT (1000). Writes docs/results/pt_tasks.csv (one row per run, with the majority-class rate of
its eval subset) and pt_tasks.json.

    python examples/smollm2/pt_tasks.py [--phase first|extra|all]   # resumable: re-run to continue

--phase first trains seed 42 of every task (what the transfer experiments need), extra the other seeds; none
trains nothing and only writes the CSV of the runs finished so far (e.g. from the committed archive).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402  (first: it puts this checkout's ds_prompt on sys.path)
    EVAL_LIMIT,
    INIT,
    LR,
    MAJORITY_LABEL,
    MODEL,
    RESULTS,
    RUNS,
    SEEDS,
    STEPS,
    finished,
    grouped_bars,
    log,
    majority_rate,
    mean_se,
    meta_json,
    restore,
    train,
    write_csv,
)

RECIPE_KEYS = ("batch_size", "prompt_length", "max_length")  # read from the runs' run.json identity
TASKS = ("sst2", "mr", "agnews", "qnli", "snli", "rte", "mrpc", "cola")
MULTI_SEED = ("sst2", "agnews", "qnli")


def prompt_dir(task: str, seed: int = SEEDS[0]) -> Path:
    return RUNS / "prompts" / f"{task}-s{seed}"


def runs(phase: str = "all") -> list[tuple[str, int]]:
    """Seed 42 of every task first (the transfer experiments need them), then the extra seeds."""
    first = [(t, SEEDS[0]) for t in TASKS]
    extra = [(t, s) for s in SEEDS[1:] for t in MULTI_SEED]
    return {"first": first, "extra": extra, "all": first + extra, "none": []}[phase]


def plot(rows: list[dict], path: Path) -> None:
    """Per task: majority-class rate, untrained and trained prompt (mean ± standard error over seeds)."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]

    def stat(task: str, key: str) -> tuple[float, float]:
        return mean_se([float(r[key]) for r in rows if r["task"] == task])
    series = {MAJORITY_LABEL: [stat(t, "majority") for t in tasks],
              "untrained prompt": [stat(t, "accuracy_before") for t in tasks],
              "trained prompt": [stat(t, "accuracy") for t in tasks]}
    seeds = ",".join(sorted({str(r["seed"]) for r in rows}))
    grouped_bars(tasks, series, path, f"Prompt tuning on {MODEL}: {STEPS} steps, seeds {seeds} "
                 f"(eval <= {EVAL_LIMIT} per task)", "accuracy")


def main(phase: str = "all") -> None:
    restore()
    for task, seed in runs(phase):
        train(prompt_dir(task, seed), task, seed)
    rows, recipe = [], set()
    for task, seed in runs():  # the CSV lists every run finished so far
        m = finished(prompt_dir(task, seed), STEPS)
        if m is None:
            continue
        identity = json.loads((prompt_dir(task, seed) / "run.json").read_text())["identity"]
        recipe.add(tuple(identity[k] for k in RECIPE_KEYS))
        metric = m.get("metric", "accuracy")  # runs before 2026-12-02 recorded accuracy only
        headline = m.get(metric) if metric != "accuracy" else m["accuracy"]
        rows.append({"task": task, "seed": seed, "steps": m["steps"], "n_eval": m["eval_n"],
                     "accuracy_before": round(m["accuracy_before"], 4), "accuracy": round(m["accuracy"], 4),
                     "metric": metric, "headline": "" if headline is None else round(headline, 4),
                     "majority": round(majority_rate(task, seed, EVAL_LIMIT, m["eval_n"]), 4)})
    write_csv(RESULTS / "pt_tasks.csv", rows)
    if rows:
        plot(rows, RESULTS / "pt_tasks.png")
    if len(recipe) > 1:
        raise SystemExit(f"the finished PT runs differ in {RECIPE_KEYS}: {sorted(recipe)}")
    ran = dict(zip(RECIPE_KEYS, recipe.pop())) if recipe else {}
    meta_json("pt_tasks", steps=STEPS, lr=LR, eval_limit=EVAL_LIMIT, seeds=sorted({r["seed"] for r in rows}),
              multi_seed=MULTI_SEED, init=INIT, **ran)
    log(f"pt_tasks done ({MODEL})")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--phase") + 1] if "--phase" in sys.argv else "all")
