"""Zero-shot transfer matrix on SmolLM2-135M: every task's prompt (seed 42) on every task, plus a random prompt.

One `ds-prompt transfer matrix` call per source prompt (so an interrupted matrix resumes source by source),
merged into docs/results/transfer_matrix.csv (source, target, accuracy, n_eval, weak_source) and a heatmap
docs/results/transfer_matrix.png. `weak_source` flags a source whose own-task prompt beats the random prompt
on its own task by less than 5 points: its row says little about transfer.

    python examples/smollm2/transfer_matrix.py
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, RESULTS, RUNS, archive, cli, figure, log, meta_json, read_json, restore, save_figure, write_csv  # noqa: E402
from pt_tasks import TASKS, prompt_dir  # noqa: E402

LIMIT = 500
WEAK_MARGIN = 0.05


def source_matrix(source: str) -> Path:
    """matrix.csv of one source prompt over every target (the sst2 call also evaluates the random prompt)."""
    out = RUNS / "matrix" / source
    if not (out / "matrix.csv").is_file():
        cli("transfer", "matrix", "--prompts", prompt_dir(source), "--tasks", ",".join(TASKS), "--data_dir", DATA,
            "--limit", LIMIT, "--output_dir", out, "--random_baseline", str(source == TASKS[0]))
        archive(out)
    return out / "matrix.csv"


def merged_rows() -> list[dict]:
    rows = []
    for source in TASKS:
        with open(source_matrix(source), newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["source"] in (source, "random")]
    acc = {(r["source"], r["target"]): float(r["accuracy"]) for r in rows}
    n = read_json(RUNS / "matrix" / TASKS[0] / "eval_counts.json") or {}
    out = []
    for r in rows:
        own = acc.get((r["source"], r["source"]))
        weak = r["source"] != "random" and own is not None and own - acc[("random", r["source"])] < WEAK_MARGIN
        out.append({"source": r["source"], "target": r["target"], "accuracy": round(float(r["accuracy"]), 4),
                    "n_eval": n.get(r["target"], ""), "weak_source": weak})
    return out


def heatmap(rows: list[dict], path: Path) -> None:
    sources = list(TASKS) + ["random"]
    grid = [[next(float(r["accuracy"]) for r in rows if r["source"] == s and r["target"] == t) for t in TASKS]
            for s in sources]
    fig, ax = figure(size=(8, 6.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0.2, vmax=1.0)
    ax.set_xticks(range(len(TASKS)), TASKS, rotation=45)
    ax.set_yticks(range(len(sources)), [s + (" *" if any(r["weak_source"] for r in rows if r["source"] == s)
                                            else "") for s in sources])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 0.6 else "black")
    ax.set_xlabel("target task (its label words)")
    ax.set_ylabel("source prompt (* own task < random + 5 pts)")
    ax.set_title(f"Zero-shot prompt transfer on SmolLM2-135M (<= {LIMIT} eval examples)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, path)


def eval_counts() -> None:
    """Examples per target actually evaluated (min(LIMIT, split size)), from the data files."""
    path = RUNS / "matrix" / TASKS[0] / "eval_counts.json"
    if path.is_file():
        return
    import json

    from ds_prompt.data.loading import load_examples
    from ds_prompt.data.tasks import get_task
    counts = {t: len(load_examples(get_task(t), "eval", DATA, limit=LIMIT, seed=0)) for t in TASKS}
    path.write_text(json.dumps(counts))
    archive(path.parent)


def main() -> None:
    restore()
    for source in TASKS:
        source_matrix(source)
    eval_counts()
    rows = merged_rows()
    write_csv(RESULTS / "transfer_matrix.csv", rows)
    heatmap(rows, RESULTS / "transfer_matrix.png")
    meta_json("transfer_matrix", limit=LIMIT, prompts="pt_tasks seed 42", weak_margin=WEAK_MARGIN,
              random_prompt="N(0, 0.02)")
    log("transfer matrix done")


if __name__ == "__main__":
    main()
